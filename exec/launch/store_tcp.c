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

#include "net.h"
#include "store_impl.h"

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
    if (pp_net_read_msg(t->fd[0], &got, &len, MAX_MSG, dl, e) < 0)
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

/* Rank 0: accepts world-1 connections; each says {rank, world}. */
static int accept_all(pp_store *st, tcp_store *t, int port, pp_err *e)
{
    int lfd = pp_net_listen(port, NULL, e);
    if (lfd < 0)
        return pp_err_prefix(e, "rendezvous %s", t->where);
    double dl = deadline_of(st);
    int rc = 0;
    for (int k = 1; rc == 0 && k < st->world; k++) {
        int fd = pp_net_accept(lfd, dl, e), hello[2];
        if (fd < 0) {
            int missing = 0;
            for (int r = 1; r < st->world && !missing; r++)
                if (t->fd[r] < 0)
                    missing = r;
            rc = pp_err_prefix(e, "rendezvous %s: %d of %d ranks arrived (rank %d did not)",
                               t->where, k, st->world, missing);
            break;
        }
        if (pp_net_read_all(fd, hello, sizeof hello, dl, e) < 0) {
            close(fd);
            rc = pp_err_prefix(e, "rendezvous %s", t->where);
        } else if (hello[1] != st->world || hello[0] < 1 || hello[0] >= st->world ||
                   t->fd[hello[0]] >= 0) {
            close(fd);
            rc = pp_errf(e, "rendezvous %s: a process says it is rank %d of %d; this is a "
                            "world of %d (another job on the same port?)",
                         t->where, hello[0], hello[1], st->world);
        } else {
            t->fd[hello[0]] = fd;
        }
    }
    close(lfd);
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
        rc = accept_all(st, t, port, e);
    } else {
        t->fd[0] = pp_net_connect(host, port, deadline_of(st), e);
        int hello[2] = {st->rank, st->world};
        if (t->fd[0] < 0 ||
            pp_net_write_all(t->fd[0], hello, sizeof hello, deadline_of(st), e) < 0)
            rc = pp_err_prefix(e, "rendezvous %s: rank %d", t->where, st->rank);
    }
    if (rc < 0)
        tcp_close(st);
    return rc;
}
