/* The rendezvous of a multi-process run: a tiny key-less store through
 * which the processes of one pipeline find each other before any data
 * moves (the NCCL unique ids, the socket transport's addresses) and hand
 * rank 0 their measured timelines at the end. Three ways to meet:
 *
 *   tcp://HOST:PORT   rank 0 listens on PORT; the others connect to HOST
 *   file:DIR          a directory every rank sees (a shared filesystem);
 *                     use a fresh one per job: rank 0 empties it at the end
 *   mpi               MPI_COMM_WORLD (builds with MPI, launched by mpirun)
 *
 * Every call is collective (all ranks, same order) and gives up after the
 * store's timeout with one line naming the rank it waited for.
 *
 * Opening also settles who belongs to the job: over tcp every connection
 * proves it holds the job secret (auth.h; strangers are dropped and rank 0
 * listens only on the spec's address unless told to --bind elsewhere);
 * with file: and mpi, whose channel the launcher or the filesystem already
 * guards, rank 0 makes a secret when none was given and hands it over for
 * the transport's connections. Then every rank checks that every other
 * runs the same job (job.h). */
#ifndef PP_STORE_H
#define PP_STORE_H

#include <stddef.h>

#include "auth.h"
#include "error.h"

typedef struct pp_store pp_store;

/* A rendezvous spec taken apart: bad input (exit 2), checked before
 * anything connects. dir points into spec. */
typedef enum { PP_STORE_TCP, PP_STORE_FILE, PP_STORE_MPI } pp_store_kind;
typedef struct {
    pp_store_kind kind;
    char host[256];
    int port;
    const char *dir;
} pp_store_spec;
int pp_store_parse(const char *spec, pp_store_spec *out, pp_err *e);

struct pp_job;
typedef struct {
    double timeout_s;          /* every call gives up after it (<= 0: 600 s) */
    pp_secret secret;          /* len 0: none given (tcp:// needs one) */
    const char *bind;          /* tcp: where rank 0 (and the transport) listen;
                                  NULL: the spec's host (the transport: the
                                  address it tells the others) */
    const struct pp_job *job;  /* checked the same on every rank; NULL: no check */
} pp_store_opts;

/* Meets the other ranks. -1 on failure, with *refused set when the cause
 * is the user's to fix (a missing or wrong secret, ranks that disagree):
 * bad input, exit 2. */
int pp_store_open(const char *spec, int rank, int world, const pp_store_opts *o,
                  pp_store **out, int *refused, pp_err *e);
/* Closes the connections; rank 0 removes a file store's files. */
void pp_store_close(pp_store *st);

/* Every rank ends with rank 0's n bytes in buf. */
int pp_store_bcast(pp_store *st, void *buf, size_t n, pp_err *e);
/* Rank 0 gets every rank's bytes (sizes may differ): *all[r] (n_r bytes in
 * (*sizes)[r]), freed with pp_store_free_gathered; other ranks get NULL. */
int pp_store_gather(pp_store *st, const void *mine, size_t n, void ***all, size_t **sizes,
                    pp_err *e);
void pp_store_free_gathered(pp_store *st, void **all, size_t *sizes);
/* Every rank gets every rank's n bytes, rank order, in all[world * n]. */
int pp_store_allgather(pp_store *st, const void *mine, size_t n, void *all, pp_err *e);
int pp_store_barrier(pp_store *st, pp_err *e);

/* The host name or address the other ranks can reach this one at:
 * $PPSCHED_HOST, else (tcp store) the local address of this rank's
 * rendezvous connection, else the host name. */
void pp_store_local_host(pp_store *st, char *buf, size_t n);

/* What the transport's connections prove and say: the job's secret (given
 * or made by rank 0), its digest, and where to listen (NULL: the address
 * pp_store_local_host gives). */
const pp_secret *pp_store_secret(const pp_store *st);
const unsigned char *pp_store_digest(const pp_store *st);
const char *pp_store_bind(const pp_store *st);

/* What rank 0 dropped while the ranks gathered ("4 connections dropped
 * (the last: a wrong job secret)"), or "" : worth a line to the user. */
const char *pp_store_strangers(const pp_store *st);

int pp_store_rank(const pp_store *st);
int pp_store_world(const pp_store *st);

#endif
