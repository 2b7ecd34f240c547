/* What a store implementation provides (store_tcp.c, store_file.c,
 * store_mpi.c); store.c builds allgather and barrier on top. Not a public
 * API. */
#ifndef PP_STORE_IMPL_H
#define PP_STORE_IMPL_H

#include "store.h"

typedef struct {
    int (*bcast)(pp_store *st, void *buf, size_t n, pp_err *e);
    /* all/sizes: world entries, allocated by the caller (rank 0 only);
     * the implementation mallocs each all[r]. */
    int (*gather)(pp_store *st, const void *mine, size_t n, void **all, size_t *sizes,
                  pp_err *e);
    void (*close)(pp_store *st);
    /* Optional: the address the other ranks reach this one at (an IPv4
     * address as text), 0 when known. */
    int (*local_addr)(pp_store *st, char *buf, size_t n);
} pp_store_ops;

struct pp_store {
    const pp_store_ops *ops;
    int rank, world;
    double timeout_s;
    void *impl;
    pp_secret secret;
    unsigned char digest[PP_DIGEST_BYTES];
    char bind[256]; /* "" when not given */
    int refused;    /* set by an implementation: the failure is the user's */
    char strangers[256]; /* what was dropped on the way in, "" if nothing */
};

int pp_store_tcp_open(pp_store *st, const char *host, int port, pp_err *e);
int pp_store_file_open(pp_store *st, const char *dir, pp_err *e);
int pp_store_mpi_open(pp_store *st, pp_err *e);

#endif
