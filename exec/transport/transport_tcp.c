/* The socket transport (transport_tcp.h). Stage s listens on a free port,
 * the ranks swap addresses through the rendezvous store, then s connects
 * to s+1 and accepts s-1. A tlink is one full-duplex connection: stage s
 * writes its activations to s+1 and reads s+1's gradients from it.
 *
 * Sends are synchronous writes; a reader thread per tlink drains the socket
 * into the tlink's bounded mailbox (mailbox.h), so a sender blocks only
 * when the receiver is `capacity` messages behind, never because both
 * sides write at once. A peer that dies closes its connections: the reader
 * sees it and the stage's next receive fails, naming the peer. */
#define _GNU_SOURCE
#include "transport_tcp.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <arpa/inet.h>

#include "mailbox.h"
#include "launch/auth.h"
#include "launch/net.h"

typedef struct {
    int32_t kind, mb;
    uint64_t bytes;
} msg_header;

/* A received message as the mailbox holds it: its kind and size travel
 * with the bytes, so the receive checks them against what it expects. */
typedef struct {
    uint64_t bytes;
    int32_t kind;
    unsigned char data[];
} tmsg;

/* No message of a run is larger than its boundary tensor (set on attach);
 * until then, a generous cap keeps a bogus length from taking the memory. */
#define MAX_MESSAGE_BEFORE_ATTACH ((uint64_t)1 << 30)

typedef struct tcp_link {
    struct tcp_transport *t;
    int peer;                 /* stage at the other end; -1: no tlink */
    int fd;
    pp_mailbox in;
    pthread_t reader;
    int reader_started;
    pthread_mutex_t mu;
    char why[512];            /* why the reader stopped, if it failed */
    void *scratch;            /* host copy of an outgoing message */
    size_t scratch_bytes;
} tlink;

typedef struct tcp_transport {
    int stage, P;
    double timeout_s;
    const pp_backend_ops *b;
    void *bk;
    tlink up, down;            /* to s-1, to s+1 */
    atomic_int aborted;       /* set by abort from another thread */
    _Atomic uint64_t max_bytes; /* the largest message a peer may send */
    unsigned char digest[PP_DIGEST_BYTES]; /* the job's, from the store */
    int up_fd;                /* stage s-1's connection, while admitting it */
} tcp_transport;

static tlink *link_to(tcp_transport *t, int peer)
{
    if (peer == t->stage - 1 && t->up.peer >= 0)
        return &t->up;
    if (peer == t->stage + 1 && t->down.peer >= 0)
        return &t->down;
    return NULL;
}

static void reader_stop(tlink *l, const char *why)
{
    pthread_mutex_lock(&l->mu);
    if (!l->why[0])
        snprintf(l->why, sizeof l->why, "%s", why);
    pthread_mutex_unlock(&l->mu);
    pp_queue_close(&l->in.q); /* what arrived can still be taken */
}

static void *reader_main(void *arg)
{
    tlink *l = arg;
    pp_err e;
    for (;;) {
        msg_header h;
        if (pp_net_read_all(l->fd, &h, sizeof h, -1, &e) < 0) {
            reader_stop(l, e.msg);
            return NULL;
        }
        uint64_t max = atomic_load(&l->t->max_bytes);
        if (h.bytes > max) {
            char why[128];
            snprintf(why, sizeof why, "stage %d announced a message of %llu bytes; this run "
                                      "sends at most %llu", l->peer, (unsigned long long)h.bytes,
                     (unsigned long long)max);
            reader_stop(l, why);
            return NULL;
        }
        tmsg *m = malloc(sizeof *m + (h.bytes ? h.bytes : 1));
        if (!m) {
            reader_stop(l, "out of memory for a message");
            return NULL;
        }
        m->bytes = h.bytes;
        m->kind = h.kind;
        if (pp_net_read_all(l->fd, m->data, h.bytes, -1, &e) < 0) {
            free(m);
            reader_stop(l, e.msg);
            return NULL;
        }
        if (pp_queue_push(&l->in.q, h.mb, m) != PP_QUEUE_OK) {
            free(m); /* aborted */
            return NULL;
        }
    }
}

static int tcp_send(pp_transport *tp, int src, int dst, int kind, int mb, const void *buf,
                    size_t bytes, pp_err *e)
{
    tcp_transport *t = tp->state;
    tlink *l = link_to(t, dst);
    if (!l || src != t->stage)
        return pp_errf(e, "stage %d cannot send to stage %d", src, dst);
    if (l->scratch_bytes < bytes) {
        void *x = realloc(l->scratch, bytes);
        if (!x)
            return pp_errf(e, "out of memory for a message");
        l->scratch = x;
        l->scratch_bytes = bytes;
    }
    t->b->to_host(t->bk, l->scratch, buf, bytes);
    msg_header h = {kind, mb, bytes};
    double dl = pp_net_now() + t->timeout_s;
    if (pp_net_write_all(l->fd, &h, sizeof h, dl, e) < 0 ||
        pp_net_write_all(l->fd, l->scratch, bytes, dl, e) < 0)
        return t->aborted ? pp_errf(e, "run aborted")
                          : pp_err_prefix(e, "sending micro-batch %d to stage %d (after %.0f s "
                                             "at most)", mb, dst, t->timeout_s);
    return 0;
}

static int tcp_recv(pp_transport *tp, int dst, int src, int kind, int mb, void *buf,
                    size_t bytes, pp_err *e)
{
    tcp_transport *t = tp->state;
    tlink *l = link_to(t, src);
    if (!l || dst != t->stage)
        return pp_errf(e, "stage %d cannot receive from stage %d", dst, src);
    void *msg = NULL;
    int rc = pp_mailbox_take(&l->in, mb, t->timeout_s, &msg);
    if (rc == PP_MAILBOX_NOMEM || rc == PP_MAILBOX_UNWANTED) {
        free(msg);
        if (rc == PP_MAILBOX_NOMEM)
            return pp_errf(e, "out of memory");
        return pp_errf(e, "stage %d sent micro-batch %d twice, or more than %d messages ahead "
                          "of what this stage asked for: the ranks disagree on the schedule",
                       src, l->in.unwanted_mb, l->in.q.capacity);
    }
    if (rc == PP_QUEUE_TIMEOUT)
        return pp_errf(e, "no message for micro-batch %d from stage %d after %.0f s (peer "
                          "stuck?)", mb, src, t->timeout_s);
    if (rc != PP_QUEUE_OK) {
        if (t->aborted)
            return pp_errf(e, "run aborted");
        pthread_mutex_lock(&l->mu);
        pp_errf(e, "connection to stage %d lost (%s): peer process ended or died", src,
                l->why[0] ? l->why : "closed");
        pthread_mutex_unlock(&l->mu);
        return -1;
    }
    tmsg *m = msg;
    if (m->kind != kind || m->bytes != bytes) {
        pp_errf(e, "stage %d sent %s of %llu bytes for micro-batch %d where this stage expects "
                   "%s of %zu: the ranks disagree on the schedule, model or micro-batch size",
                src, m->kind == PP_MSG_ACT ? "activations" : "a gradient",
                (unsigned long long)m->bytes, mb, kind == PP_MSG_ACT ? "activations" : "a gradient",
                bytes);
        free(m);
        return -1;
    }
    t->b->from_host(t->bk, buf, m->data, bytes);
    free(m);
    return 0;
}

static void tcp_abort(pp_transport *tp)
{
    tcp_transport *t = tp->state;
    t->aborted = 1;
    tlink *ls[] = {&t->up, &t->down};
    for (int i = 0; i < 2; i++)
        if (ls[i]->peer >= 0 && ls[i]->fd >= 0) {
            shutdown(ls[i]->fd, SHUT_RDWR); /* the peer sees its tlink close */
            pp_queue_abort(&ls[i]->in.q);
        }
}

static void free_msg(void *ctx, void *buf)
{
    (void)ctx;
    free(buf);
}

static void link_free(tlink *l)
{
    if (l->peer < 0)
        return;
    if (l->fd >= 0)
        shutdown(l->fd, SHUT_RDWR);
    pp_queue_abort(&l->in.q);
    if (l->reader_started)
        pthread_join(l->reader, NULL);
    if (l->fd >= 0)
        close(l->fd);
    pp_mailbox_free(&l->in, free_msg, NULL);
    pthread_mutex_destroy(&l->mu);
    free(l->scratch);
}

static void tcp_destroy(pp_transport *tp)
{
    tcp_transport *t = tp->state;
    link_free(&t->up);
    link_free(&t->down);
    free(t);
    free(tp);
}

static int tcp_attach(pp_transport *tp, int stage, const pp_backend_ops *b, void *bk,
                      pp_err *e)
{
    tcp_transport *t = tp->state;
    if (stage != t->stage)
        return pp_errf(e, "the socket transport of stage %d cannot run stage %d", t->stage,
                       stage);
    t->b = b;
    t->bk = bk;
    atomic_store(&t->max_bytes, (uint64_t)b->boundary_floats(bk) * sizeof(float));
    return 0;
}

/* Where a rank listens: pp_store_local_host's address and a free port. */
typedef struct {
    char host[256];
    int32_t port;
} address;

static int link_init(tlink *l, tcp_transport *t, int peer, int capacity, pp_err *e)
{
    l->t = t;
    l->peer = peer;
    l->fd = -1;
    pthread_mutex_init(&l->mu, NULL);
    return pp_mailbox_init(&l->in, capacity, e);
}

static int link_start(tlink *l, int fd, pp_err *e)
{
    l->fd = fd;
    if (pthread_create(&l->reader, NULL, reader_main, l) != 0)
        return pp_errf(e, "cannot start a reader thread");
    l->reader_started = 1;
    return 0;
}

/* Stage s admits one connection: stage s-1 of this job. */
static pp_auth_verdict admit_up(void *ctx, const pp_hello *h, int fd)
{
    tcp_transport *t = ctx;
    if (h->world != t->P || h->id != t->stage - 1)
        return PP_AUTH_NOT_WANTED;
    if (memcmp(h->digest, t->digest, sizeof t->digest) != 0)
        return PP_AUTH_OTHER_JOB;
    if (fd >= 0)
        t->up_fd = fd;
    return PP_AUTH_ADMIT;
}

/* Connects to s+1 and admits s-1; both ends prove they hold the job's
 * secret (auth.h), and whoever else connects to the port is dropped. */
static int connect_links(tcp_transport *t, int lfd, const address *all, const pp_secret *secret,
                         pp_err *e)
{
    double dl = pp_net_now() + t->timeout_s;
    if (t->down.peer >= 0) {
        const address *a = &all[t->stage + 1];
        pp_hello me = {t->stage, t->P, {0}};
        memcpy(me.digest, t->digest, sizeof me.digest);
        int refused = 0;
        int fd = pp_net_connect(a->host, a->port, dl, e);
        if (fd < 0 || pp_auth_connect(fd, secret, PP_HELLO_LINK, &me, dl, &refused, e) < 0) {
            if (fd >= 0)
                close(fd);
            return pp_err_prefix(e, "stage %d: link to stage %d at %s:%d", t->stage,
                                 t->stage + 1, a->host, a->port);
        }
        if (link_start(&t->down, fd, e) < 0) {
            close(fd);
            return -1;
        }
    }
    if (t->up.peer >= 0) {
        pp_auth_stats stats = {0};
        t->up_fd = -1;
        if (pp_auth_accept(lfd, secret, PP_HELLO_LINK, 1, dl, pp_auth_handshake_s(t->timeout_s),
                           admit_up, t, &stats, e) < 0) {
            char note[256];
            pp_auth_stats_note(&stats, note, sizeof note);
            return pp_err_prefix(e, "stage %d: link from stage %d%s", t->stage, t->stage - 1,
                                 note);
        }
        if (link_start(&t->up, t->up_fd, e) < 0) {
            close(t->up_fd);
            return -1;
        }
    }
    return 0;
}

/* Where a stage listens: --bind, else the address it tells the others
 * when that is a numeric one, else every interface (a host name may
 * resolve to a loopback address here and to the network one elsewhere). */
static const char *listen_host(const pp_store *st, const char *advertised)
{
    struct in_addr a;
    if (pp_store_bind(st))
        return pp_store_bind(st);
    return inet_pton(AF_INET, advertised, &a) == 1 ? advertised : NULL;
}

int pp_transport_tcp_create(pp_store *st, int stage, int P, int capacity, double timeout_s,
                            pp_transport **out, pp_err *e)
{
    if (pp_store_world(st) != P || pp_store_rank(st) != stage)
        return pp_errf(e, "socket transport: rank %d of %d cannot run stage %d of %d",
                       pp_store_rank(st), pp_store_world(st), stage, P);
    pp_transport *tp = calloc(1, sizeof *tp);
    tcp_transport *t = calloc(1, sizeof *t);
    address *all = calloc((size_t)P, sizeof *all);
    int lfd = -1, rc = 0;
    if (!tp || !t || !all) {
        free(tp);
        free(t);
        free(all);
        return pp_errf(e, "out of memory");
    }
    t->stage = stage;
    memcpy(t->digest, pp_store_digest(st), sizeof t->digest);
    atomic_store(&t->max_bytes, MAX_MESSAGE_BEFORE_ATTACH);
    t->P = P;
    t->timeout_s = timeout_s;
    t->up.peer = t->down.peer = -1;
    tp->send = tcp_send;
    tp->recv = tcp_recv;
    tp->abort = tcp_abort;
    tp->destroy = tcp_destroy;
    tp->attach = tcp_attach;
    tp->state = t;
    if (stage > 0)
        rc = link_init(&t->up, t, stage - 1, capacity, e);
    if (rc == 0 && stage < P - 1)
        rc = link_init(&t->down, t, stage + 1, capacity, e);
    address me;
    memset(&me, 0, sizeof me);
    pp_store_local_host(st, me.host, sizeof me.host);
    int port = 0;
    if (rc == 0 && (lfd = pp_net_listen(listen_host(st, me.host), 0, &port, e)) < 0)
        rc = -1;
    me.port = port;
    /* every rank takes part in the swap, even one whose listen failed, so
     * that the others are not left waiting for it */
    int ok = rc == 0;
    if (pp_store_allgather(st, &me, sizeof me, all, rc == 0 ? e : &(pp_err){{0}}) < 0 && ok)
        rc = -1;
    if (rc == 0)
        rc = connect_links(t, lfd, all, pp_store_secret(st), e);
    if (lfd >= 0)
        close(lfd);
    free(all);
    if (rc < 0) {
        tcp_destroy(tp);
        return -1;
    }
    *out = tp;
    return 0;
}
