/* The rendezvous over TCP (tcp://HOST:PORT): rank 0 listens on PORT and
 * keeps one connection per other rank, which connects to HOST:PORT and
 * says who it is. A star: broadcast is rank 0 writing to each, gather is
 * rank 0 reading from each in rank order. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "auth.h"
#include "net.h"
#include "store_impl.h"

/* a gather's parts (timelines, a stage's final weights) from authenticated
 * ranks; a broadcast's size is known */
#define MAX_MSG ((size_t)1 << 34)

typedef struct {
    char where[300]; /* "tcp://host:port", for messages */
    int *fd;         /* rank 0: [world], one per rank (fd[0] unused); others: fd[0] */
} tcp_store;

static double deadline_of(const pp_store *st)
{
    return pp_net_now() + st->timeout_s;
}

static int tcp_bcast(pp_store *st, void *buf, size_t n, pp_err *e)
{
    tcp_store *t = st->impl;
    double dl = deadline_of(st);
    if (st->rank == 0) {
        for (int r = 1; r < st->world; r++)
            if (pp_net_write_msg(t->fd[r], buf, n, dl, e) < 0)
                return pp_err_prefix(e, "rendezvous %s: rank %d", t->where, r);
        return 0;
    }
    void *got;
    size_t len;
    if (pp_net_read_msg(t->fd[0], &got, &len, n, dl, e) < 0)
        return pp_err_prefix(e, "rendezvous %s: rank 0", t->where);
    int rc = len == n ? 0
                      : pp_errf(e, "rendezvous %s: rank 0 sent %zu bytes, expected %zu", t->where,
                                len, n);
    if (rc == 0)
        memcpy(buf, got, n);
    free(got);
    return rc;
}

static int tcp_gather(pp_store *st, const void *mine, size_t n, void **all, size_t *sizes,
                      pp_err *e)
{
    tcp_store *t = st->impl;
    double dl = deadline_of(st);
    if (st->rank != 0) {
        if (pp_net_write_msg(t->fd[0], mine, n, dl, e) < 0)
            return pp_err_prefix(e, "rendezvous %s: rank 0", t->where);
        return 0;
    }
    all[0] = malloc(n ? n : 1);
    if (!all[0])
        return pp_errf(e, "out of memory");
    memcpy(all[0], mine, n);
    sizes[0] = n;
    for (int r = 1; r < st->world; r++)
        if (pp_net_read_msg(t->fd[r], &all[r], &sizes[r], MAX_MSG, dl, e) < 0)
            return pp_err_prefix(e, "rendezvous %s: rank %d", t->where, r);
    return 0;
}

static void tcp_close(pp_store *st)
{
    tcp_store *t = st->impl;
    int n = st->rank == 0 ? st->world : 1;
    for (int r = 0; r < n; r++)
        if (t->fd[r] >= 0)
            close(t->fd[r]);
    free(t->fd);
    free(t);
}

/* The local end of a rendezvous connection: an address of this host that
 * the other side reached (rank 0 uses its connection to rank 1). */
static int tcp_local_addr(pp_store *st, char *buf, size_t n)
{
    tcp_store *t = st->impl;
    int fd = t->fd[st->rank == 0 ? 1 : 0];
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    if (fd < 0 || getsockname(fd, (struct sockaddr *)&a, &len) < 0 || a.sin_family != AF_INET ||
        !inet_ntop(AF_INET, &a.sin_addr, buf, (socklen_t)n))
        return -1;
    return 0;
}

static const pp_store_ops tcp_ops = {tcp_bcast, tcp_gather, tcp_close, tcp_local_addr};

/* Rank 0 admits each other rank once, by its authenticated hello. A
 * different job digest is let in: the agreement after the rendezvous
 * names what differs, on every rank. */
static pp_auth_verdict admit_rank(void *ctx, const pp_hello *h, int fd)
{
    pp_store *st = ctx;
    tcp_store *t = st->impl;
    if (h->world != st->world || h->id < 1 || h->id >= st->world || t->fd[h->id] >= 0)
        return PP_AUTH_NOT_WANTED;
    if (fd >= 0)
        t->fd[h->id] = fd;
    return PP_AUTH_ADMIT;
}

/* Rank 0: listens on the spec's address (or --bind) and admits world-1
 * ranks; strangers are dropped on the way. */
static int accept_all(pp_store *st, tcp_store *t, const char *host, int port, pp_err *e)
{
    int lfd = pp_net_listen(st->bind[0] ? st->bind : host, port, NULL, e);
    if (lfd < 0)
        return pp_err_prefix(e, "rendezvous %s", t->where);
    pp_auth_stats stats = {0};
    int rc = pp_auth_accept(lfd, &st->secret, PP_HELLO_STORE, st->world - 1, deadline_of(st),
                            pp_auth_handshake_s(st->timeout_s), admit_rank, st, &stats, e);
    close(lfd);
    char note[256];
    pp_auth_stats_note(&stats, note, sizeof note);
    if (note[0]) /* without its leading "; " */
        snprintf(st->strangers, sizeof st->strangers, "%s", note + 2);
    if (rc < 0) {
        int missing = 0;
        for (int r = 1; r < st->world && !missing; r++)
            if (t->fd[r] < 0)
                missing = r;
        if (!strcmp(e->msg, "timed out"))
            rc = pp_errf(e, "rendezvous %s: %d of %d ranks arrived within %.0f s (rank %d did "
                            "not%s)", t->where, stats.admitted + 1, st->world, st->timeout_s,
                         missing, note);
        else
            rc = pp_err_prefix(e, "rendezvous %s", t->where);
    }
    return rc;
}

int pp_store_tcp_open(pp_store *st, const char *host, int port, pp_err *e)
{
    tcp_store *t = calloc(1, sizeof *t);
    int n = st->rank == 0 ? st->world : 1;
    if (!t || !(t->fd = malloc((size_t)n * sizeof *t->fd))) {
        free(t);
        return pp_errf(e, "out of memory");
    }
    for (int r = 0; r < n; r++)
        t->fd[r] = -1;
    snprintf(t->where, sizeof t->where, "tcp://%s:%d", host, port);
    st->impl = t;
    st->ops = &tcp_ops;
    int rc = 0;
    if (st->rank == 0) {
        rc = accept_all(st, t, host, port, e);
    } else {
        pp_hello me = {st->rank, st->world, {0}};
        memcpy(me.digest, st->digest, sizeof me.digest);
        t->fd[0] = pp_net_connect(host, port, deadline_of(st), e);
        if (t->fd[0] < 0 || pp_auth_connect(t->fd[0], &st->secret, PP_HELLO_STORE, &me,
                                            deadline_of(st), &st->refused, e) < 0)
            rc = pp_err_prefix(e, "rendezvous %s: rank %d", t->where, st->rank);
    }
    if (rc < 0)
        tcp_close(st);
    return rc;
}
