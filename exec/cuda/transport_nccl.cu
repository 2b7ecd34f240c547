/* The NCCL transport (transport_nccl.h): the send/receive orders of the IR
 * lowered onto NCCL point-to-point calls so that they cannot deadlock.
 *
 * Why each piece is there:
 *   - One communicator and one stream per link and direction: NCCL matches
 *     the messages of a communicator in posting order and a stream runs its
 *     work in order, so sharing either between the two directions would tie
 *     the activations of link (s, s+1) to its gradients, an order the
 *     schedule does not promise.
 *   - Receives are posted in the sender's order (read off the IR) and
 *     early messages are parked: the receiver may want them in another
 *     order, and NCCL has no tags.
 *   - Sends copy into a pooled buffer and return: the runtime reuses its
 *     buffer at once, and a send that waited for its receive would deadlock
 *     1F1B (both neighbours sending before receiving).
 *   - Every host wait polls (cudaEventQuery, ncclCommGetAsyncError) with a
 *     deadline instead of blocking in CUDA or NCCL: communicators are
 *     nonblocking (config.blocking = 0), so a dead peer, an NCCL error or
 *     the runtime's abort ends a wait with a message; the transport then
 *     aborts its communicators so that no NCCL kernel spins on forever.
 *
 * Send and receive run on the stage's thread and leave its current device
 * (or green context) as the backend set it: every CUDA call here names its
 * stream or event, and NCCL calls name their communicator.
 *
 * Locking: one mutex guards every NCCL call and all channel state. NCCL
 * does not allow two threads to issue operations on communicators of one
 * device at once, and in loopback mode (all stages in this process) the
 * sending and the receiving stage threads share a channel. Waits release
 * the mutex between polls.
 *
 * Failure messages never contain the word "aborted" except for "run
 * aborted" (a wait ended by someone else's failure): the runtime reports
 * the first stage error without it as the cause.
 *
 * This file holds the helpers every piece shares (time, channels, failure,
 * waiting) and the creation of a transport, multi-process or loopback.
 * Beside it: nccl_channel.cuh (the state, private to exec/cuda/),
 * nccl_setup.cu (communicators, buffers, warm-up, attach, teardown) and
 * nccl_sendrecv.cu (send, receive, parking). */
#include <cuda_runtime.h>
#include <nccl.h>

#include <cstring>
#include <ctime>
#include <mutex>
#include <new>
#include <vector>

#include "nccl_channel.cuh"
#include "transport_nccl.h"

namespace pp_nccl {

/* --- time ---------------------------------------------------------------- */

double now_s()
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Between two polls: short against a micro-batch's compute (milliseconds),
 * long enough not to keep a core busy. */
void nap()
{
    struct timespec ts = {0, 20 * 1000};
    nanosleep(&ts, nullptr);
}

/* --- channels ------------------------------------------------------------ */

bool is_local(const channel &c)
{
    return c.sends || c.recvs;
}

const char *kind_name(int kind)
{
    return kind == PP_MSG_ACT ? "activation" : "gradient";
}

channel *chan(nccl_tr *t, int src, int dst, int kind)
{
    if (kind != PP_MSG_ACT && kind != PP_MSG_GRAD)
        return nullptr;
    int link = kind == PP_MSG_ACT ? src : dst;
    if (link < 0 || link >= t->P - 1 || (kind == PP_MSG_ACT ? dst != src + 1 : dst != src - 1))
        return nullptr;
    return &t->ch[2 * link + kind];
}

/* The link's messages in the order the sender sends them: F actions of
 * stage `link` (activations), or B/I actions of stage link + 1 (gradients). */
static std::vector<int> sender_order(const pp_schedule *ir, int link, int kind)
{
    std::vector<int> order;
    const pp_action_list *l = &ir->rank[kind == PP_MSG_ACT ? link : link + 1];
    for (size_t i = 0; i < l->count; i++) {
        int op = l->items[i].op;
        if (kind == PP_MSG_ACT ? op == PP_OP_F : op == PP_OP_B || op == PP_OP_I)
            order.push_back(l->items[i].mb);
    }
    return order;
}

/* --- failure ------------------------------------------------------------- */

/* Stops every wait and aborts every communicator: what a failure, the
 * runtime's abort and a failed shutdown all do. Idempotent. */
void shut_down(nccl_tr *t)
{
    t->aborted = true;
    std::lock_guard<std::mutex> lk(t->mu);
    for (auto &c : t->ch)
        if (c.comm) {
            ncclCommAbort(c.comm);
            c.comm = nullptr;
        }
}

/* The communicator's state: ncclSuccess, ncclInProgress (a nonblocking
 * communicator still initialising, enqueueing or finalizing) or an error
 * (mu held). */
ncclResult_t comm_state(ncclComm_t comm)
{
    ncclResult_t state = ncclSuccess;
    ncclResult_t rc = ncclCommGetAsyncError(comm, &state);
    return rc != ncclSuccess ? rc : state;
}

/* -1 with e naming the link and NCCL's own explanation. */
int link_error(channel *c, int self, ncclResult_t state, const char *what, pp_err *e)
{
    const char *last = c->comm ? ncclGetLastError(c->comm) : "";
    return pp_errf(e, "stage %d: NCCL error on the link to stage %d%s%s: %s%s%s; %s", self,
                   self == c->src ? c->dst : c->src, what ? " in " : "", what ? what : "",
                   ncclGetErrorString(state), last && *last ? ": " : "", last ? last : "", SHUT);
}

/* 0 while the communicator is healthy (in progress counts: it is busy
 * enqueueing), else -1 with e filled (mu held). */
int comm_error(channel *c, int self, pp_err *e)
{
    if (!c->comm)
        return 0;
    ncclResult_t state = comm_state(c->comm);
    if (state == ncclSuccess || state == ncclInProgress)
        return 0;
    return link_error(c, self, state, nullptr, e);
}

int cuda_error(cudaError_t rc, channel *c, int self, const char *what, pp_err *e)
{
    return pp_errf(e, "stage %d: CUDA error on the link to stage %d (%s): %s; %s", self,
                   self == c->src ? c->dst : c->src, what, cudaGetErrorString(rc), SHUT);
}

/* --- waiting ------------------------------------------------------------- */

/* An NCCL call's immediate result: in progress is fine (nonblocking). */
int posted(ncclResult_t rc, channel *c, int self, const char *what, pp_err *e)
{
    if (rc == ncclSuccess || rc == ncclInProgress)
        return POLL_DONE;
    return link_error(c, self, rc, what, e), POLL_FAIL;
}

/* POLL_DONE when ev has completed (mu held). */
int event_done(cudaEvent_t ev, channel *c, int self, pp_err *e)
{
    cudaError_t rc = cudaEventQuery(ev);
    if (rc == cudaSuccess)
        return POLL_DONE;
    if (rc == cudaErrorNotReady)
        return POLL_WAIT;
    cuda_error(rc, c, self, "cudaEventQuery", e);
    return POLL_FAIL;
}

/* --- creation ------------------------------------------------------------ */

static nccl_tr *new_transport(const pp_schedule *ir, int capacity, double timeout_s, pp_err *e)
{
    int P = ir ? ir->info.stages : 0;
    if (P < 1)
        return pp_errf(e, "NCCL transport: the schedule has no stages"), nullptr;
    if (capacity < 1)
        return pp_errf(e, "NCCL transport: capacity %d (need at least 1)", capacity), nullptr;
    nccl_tr *t = new (std::nothrow) nccl_tr;
    if (!t)
        return pp_errf(e, "out of memory"), nullptr;
    t->ir = ir;
    t->P = P;
    t->loopback = false;
    t->self = 0;
    t->capacity = capacity;
    t->timeout_s = timeout_s > 0 ? timeout_s : 600;
    t->st.assign((size_t)P, stage_info{});
    t->ch.assign((size_t)(2 * (P - 1)), channel{});
    t->nlocal = t->nattached = 0;
    t->device = -1;
    t->slot_bytes = 0;
    t->ready = false;
    for (int link = 0; link < P - 1; link++)
        for (int kind = 0; kind < 2; kind++) {
            channel &c = t->ch[(size_t)(2 * link + kind)];
            c.kind = kind;
            c.src = kind == PP_MSG_ACT ? link : link + 1;
            c.dst = kind == PP_MSG_ACT ? link + 1 : link;
            c.order = sender_order(ir, link, kind);
        }
    return t;
}

static pp_transport *wrap(nccl_tr *t, pp_err *e)
{
    pp_transport *tp = new (std::nothrow) pp_transport;
    if (!tp) {
        delete t;
        return pp_errf(e, "out of memory"), nullptr;
    }
    memset(tp, 0, sizeof *tp);
    tp->send = nccl_send;
    tp->recv = nccl_recv;
    tp->abort = nccl_abort;
    tp->destroy = nccl_destroy;
    tp->attach = nccl_attach;
    tp->state = t;
    return tp;
}

} // namespace pp_nccl

using namespace pp_nccl;

extern "C" {

int pp_nccl_ids_bytes(int P)
{
    return P > 1 ? 2 * (P - 1) * (int)sizeof(ncclUniqueId) : 0;
}

int pp_nccl_make_ids(int P, void *out, pp_err *e)
{
    for (int i = 0; i < 2 * (P - 1); i++) {
        ncclUniqueId id;
        ncclResult_t rc = ncclGetUniqueId(&id);
        if (rc != ncclSuccess)
            return pp_errf(e, "ncclGetUniqueId: %s%s%s", ncclGetErrorString(rc),
                           *ncclGetLastError(nullptr) ? ": " : "", ncclGetLastError(nullptr));
        memcpy((char *)out + (size_t)i * sizeof id, &id, sizeof id);
    }
    return 0;
}

int pp_transport_nccl_create(const pp_schedule *ir, int rank, const void *ids, int capacity,
                             double timeout_s, pp_transport **out, pp_err *e)
{
    nccl_tr *t = new_transport(ir, capacity, timeout_s, e);
    if (!t)
        return -1;
    if (rank < 0 || rank >= t->P || (t->P > 1 && !ids)) {
        pp_errf(e, "NCCL transport: rank %d of a %d-stage pipeline%s", rank, t->P,
                rank >= 0 && rank < t->P ? " needs the unique ids of rank 0" : " does not exist");
        delete t;
        return -1;
    }
    t->st[(size_t)rank].local = true;
    t->nlocal = 1;
    t->self = rank;
    /* Both communicators of link s: stage s is rank 0, stage s + 1 rank 1. */
    for (auto &c : t->ch) {
        int link = c.kind == PP_MSG_ACT ? c.src : c.dst;
        c.sends = c.src == rank;
        c.recvs = c.dst == rank;
        c.nranks = 2;
        c.myrank = rank == link ? 0 : 1;
        c.peer = 1 - c.myrank;
        memcpy(&c.id, (const char *)ids + (size_t)(&c - &t->ch[0]) * sizeof c.id, sizeof c.id);
    }
    if (!(*out = wrap(t, e)))
        return -1;
    return 0;
}

int pp_transport_nccl_loopback_create(const pp_schedule *ir, int capacity, double timeout_s,
                                      pp_transport **out, pp_err *e)
{
    nccl_tr *t = new_transport(ir, capacity, timeout_s, e);
    if (!t)
        return -1;
    t->loopback = true;
    for (auto &si : t->st)
        si.local = true;
    t->nlocal = t->P;
    for (auto &c : t->ch) {
        c.sends = c.recvs = true;
        c.nranks = 1;
        c.myrank = c.peer = 0;
        ncclResult_t rc = ncclGetUniqueId(&c.id);
        if (rc != ncclSuccess) {
            pp_errf(e, "ncclGetUniqueId: %s", ncclGetErrorString(rc));
            delete t;
            return -1;
        }
    }
    if (!(*out = wrap(t, e)))
        return -1;
    return 0;
}

} // extern "C"
