/* exec/transport/: moving activations and gradients between stages: the
 * transport table (this header), the in-process transport between stage
 * threads, the socket transport between processes (transport_tcp.h), and
 * the bounded mailbox and queue both use. May include model/ (buffers
 * belong to a backend) and launch/ (the socket transport meets its peers
 * through the rendezvous store); never runtime/. The NCCL transport lives
 * with the CUDA code in exec/cuda/.
 *
 * Moving activations (forward, stage s -> s+1) and gradients (backward,
 * s -> s-1) between stages. The in-process transport passes them between
 * stage threads through bounded queues; the socket transport
 * (transport_tcp.c) and the NCCL transport (cuda/transport_nccl.cu) connect
 * stages in different processes behind the same table. Receives name the micro-batch they want:
 * a message that arrives early waits in the receiver's mailbox, so stages
 * may consume in any order their IR says. */
#ifndef PP_TRANSPORT_H
#define PP_TRANSPORT_H

#include <stddef.h>

#include "model/backend.h"
#include "error.h"

enum { PP_MSG_ACT = 0, PP_MSG_GRAD = 1 };

typedef struct pp_transport pp_transport;
struct pp_transport {
    /* Sends `bytes` of stage `src`'s buffer to stage `dst`. */
    int (*send)(pp_transport *t, int src, int dst, int kind, int mb, const void *buf,
                size_t bytes, pp_err *e);
    /* Receives the message (kind, mb) from `src` into buf. Blocks; fails
     * when the transport is aborted or the timeout passes. */
    int (*recv)(pp_transport *t, int dst, int src, int kind, int mb, void *buf, size_t bytes,
                pp_err *e);
    /* Wakes every blocked call with an error: a failing stage stops the
     * others instead of leaving them waiting forever. */
    void (*abort)(pp_transport *t);
    void (*destroy)(pp_transport *t);
    /* Optional (NULL: nothing to do): called once per local stage after the
     * runtime created it, before any send or receive, so that a transport
     * can put its work in the order of the stage's stream. */
    int (*attach)(pp_transport *t, int stage, const pp_backend_ops *b, void *backend_stage,
                  pp_err *e);
    void *state;
};

/* One process, stages as threads; `capacity` messages per link and
 * direction before a sender blocks; receives fail after timeout_s. With
 * link_s > 0 every message takes that long on its link (one at a time per
 * pair of ranks and direction, as in the simulator); rank_of[stage] names
 * the rank of each stage (NULL: stage s on rank s), and messages between
 * stages of one rank take no time. */
int pp_transport_inproc_create(int stages, int capacity, double timeout_s, double link_s,
                               const pp_backend_ops *backend, void **backend_stages,
                               const int *rank_of, pp_transport **out, pp_err *e);

#endif
