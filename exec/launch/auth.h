/* Who may join a run. Every connection of a multi-process run (the TCP
 * rendezvous's and the socket transport's) opens with a handshake that
 * proves both ends hold the job's secret, without sending it:
 *
 *   acceptor  -> connector  challenge: magic, version, purpose, nonce A
 *   connector -> acceptor   hello: magic, version, purpose, who it is
 *                           (rank or stage, world), the job digest,
 *                           nonce C, HMAC-SHA256(secret, challenge|hello)
 *   acceptor  -> connector  verdict, HMAC-SHA256(secret, challenge|hello|verdict)
 *
 * Fresh nonces on both sides make a recorded handshake useless; the
 * acceptor's MAC tells the connector it reached a process of its own job.
 * Anything else (a port scanner, a silent connection, junk, a wrong
 * secret, another version) is dropped and counted, and the acceptor goes
 * on waiting for the processes it wants: handshakes run side by side, each
 * with its own short deadline, so no stranger can hold up the run. The
 * connection is authenticated, not encrypted (see docs/ROBUSTNESS.md). */
#ifndef PP_AUTH_H
#define PP_AUTH_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

#define PP_SECRET_MIN 16  /* bytes */
#define PP_SECRET_MAX 256
typedef struct {
    unsigned char key[PP_SECRET_MAX];
    size_t len; /* 0: none */
} pp_secret;

/* The job secret: $PPSCHED_JOB_SECRET, else the file `file` (or
 * $PPSCHED_JOB_SECRET_FILE when file is NULL), without a trailing newline;
 * s->len 0 when neither is set. Refuses a secret shorter than
 * PP_SECRET_MIN bytes and a file other users may read. */
int pp_secret_load(pp_secret *s, const char *file, pp_err *e);
/* 32 random bytes from the kernel. */
int pp_secret_generate(pp_secret *s, pp_err *e);

#define PP_DIGEST_BYTES 32
/* What a connector says about itself. */
typedef enum { PP_HELLO_STORE = 1, PP_HELLO_LINK = 2 } pp_hello_purpose;
typedef struct {
    int32_t id;    /* its rank (rendezvous) or stage (transport link) */
    int32_t world;
    unsigned char digest[PP_DIGEST_BYTES]; /* the job's (job.h) */
} pp_hello;

/* The acceptor's answer to an authenticated hello. */
typedef enum {
    PP_AUTH_ADMIT = 0,
    PP_AUTH_BAD_MAC = 1,    /* a wrong secret (sent without a MAC) */
    PP_AUTH_NOT_WANTED = 2, /* a rank or stage the acceptor does not wait for */
    PP_AUTH_OTHER_JOB = 3,  /* another job digest */
    PP_AUTH_VERSION = 4,    /* another handshake version (sent without a MAC) */
} pp_auth_verdict;

/* The connector's side on a connected fd: 0 when admitted. -1 otherwise,
 * with *refused set when the acceptor refused this process (a wrong
 * secret, job or version: the user's mistake) rather than the connection
 * failing. */
int pp_auth_connect(int fd, const pp_secret *s, pp_hello_purpose purpose, const pp_hello *mine,
                    double deadline, int *refused, pp_err *e);

/* The acceptor's check of one hello (PP_AUTH_HELLO_BYTES from the
 * connector) against the challenge it sent: PP_AUTH_ADMIT with *h filled
 * when it is well formed, of this version and purpose, and signed with
 * the secret; PP_AUTH_VERSION or PP_AUTH_BAD_MAC; -1 when it is not a
 * hello at all. Pure: the fuzzer calls it too. */
#define PP_AUTH_CHALLENGE_BYTES 32
#define PP_AUTH_HELLO_BYTES 104
int pp_auth_check_hello(const pp_secret *s, pp_hello_purpose purpose,
                        const unsigned char *challenge, const unsigned char *hello, pp_hello *h);

/* Decides on an authenticated hello: PP_AUTH_ADMIT takes the connection
 * (the callee keeps fd), anything else refuses it. */
typedef pp_auth_verdict (*pp_auth_admit_fn)(void *ctx, const pp_hello *h, int fd);

typedef struct {
    int admitted;
    int dropped;     /* strangers: closed early, junk, a wrong secret or version */
    int silent;      /* said nothing within the handshake deadline */
    int refused;     /* authenticated but not wanted (admit said no) */
    char last[160];  /* what the last dropped connection did */
} pp_auth_stats;

/* The acceptor's side: accepts on lfd until `want` connections are
 * admitted or the deadline passes (-1 with "timed out", stats say what
 * came instead). Each handshake must finish within handshake_s of its
 * connect. */
int pp_auth_accept(int lfd, const pp_secret *s, pp_hello_purpose purpose, int want,
                   double deadline, double handshake_s, pp_auth_admit_fn admit, void *ctx,
                   pp_auth_stats *stats, pp_err *e);

/* "; 2 connections dropped (a wrong job secret)" or "" : for messages. */
void pp_auth_stats_note(const pp_auth_stats *st, char *buf, size_t n);

/* The per-connection handshake deadline for a run with this timeout. */
double pp_auth_handshake_s(double timeout_s);

#endif
