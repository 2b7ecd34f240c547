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
 * the first stage error without it as the cause. */
#include <cuda_runtime.h>
#include <nccl.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <mutex>
#include <new>
#include <vector>

extern "C" {
#include "model/backend.h"
#include "error.h"
#include "ir.h"
#include "transport/transport.h"
}
#include "cuda_backend.h"
#include "transport_nccl.h"

namespace {

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

/* --- state --------------------------------------------------------------- */

enum slot_state {
    SLOT_FREE,
    SLOT_STAGED, /* copied in; its send is not posted yet */
    SLOT_POSTED, /* its NCCL operation is enqueued; `done` tells when it finished */
    SLOT_PARKED  /* received before it was wanted */
};

/* One device message buffer of a pool. */
struct slot {
    char *buf;
    cudaEvent_t ready; /* sender: the copy into buf (on the stage stream) */
    cudaEvent_t done;  /* the NCCL operation on buf (on the link's stream) */
    int state;
    int mb;
    size_t seq; /* position of the message in the link's order */
    size_t bytes;
};

/* One link and direction as this process sees it: its sending side, its
 * receiving side, or (loopback) both. */
struct channel {
    int src, dst, kind;
    bool sends, recvs; /* which sides live in this process */
    int nranks, myrank, peer;
    ncclUniqueId id;
    ncclComm_t comm;
    cudaStream_t stream;
    std::vector<int> order; /* micro-batches in the sender's order */
    size_t next_send, next_recv;
    char *send_mem, *park_mem;
    std::vector<slot> out;    /* sending side: messages in flight */
    std::vector<slot> parked; /* receiving side: early messages */
    cudaEvent_t recv_done;     /* the last receive into the caller's buffer */
    cudaEvent_t consumer_free; /* the receiving stage's stream reached this point */
};

struct stage_info {
    bool local, attached;
    cudaStream_t stream;
    int device;
    size_t msg_bytes;
};

struct nccl_tr {
    const pp_schedule *ir;
    int P;
    bool loopback;
    int self; /* the stage named in messages about all links (multi-process: the rank) */
    int capacity;
    double timeout_s;
    std::vector<stage_info> st;
    std::vector<channel> ch; /* [2 * link + kind]; link s joins stages s and s + 1 */
    int nlocal, nattached;
    int device;
    size_t slot_bytes;
    bool ready; /* communicators and buffers exist */
    std::mutex mu;
    std::atomic<bool> aborted{false}; /* every wait returns; set once, never cleared */
};

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
std::vector<int> sender_order(const pp_schedule *ir, int link, int kind)
{
    std::vector<int> order;
    const pp_action_list *l = &ir->stage[kind == PP_MSG_ACT ? link : link + 1];
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

const char *const SHUT = "NCCL communicators closed with ncclCommAbort";

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

enum { POLL_WAIT, POLL_DONE, POLL_FAIL };

/* Polls cond (called with mu held; POLL_FAIL fills e) until it is done.
 * Each round also checks the abort flag, the channel's communicator (if
 * c) and the deadline; late(e) words the timeout. Any failure shuts the
 * transport down. */
template <class Cond, class Late>
int wait_until(nccl_tr *t, channel *c, int self, double deadline, Cond cond, Late late, pp_err *e)
{
    for (;;) {
        int rc;
        {
            std::lock_guard<std::mutex> lk(t->mu);
            if (t->aborted)
                return pp_errf(e, "run aborted");
            rc = cond(e);
            if (rc == POLL_WAIT && c && comm_error(c, self, e) < 0)
                rc = POLL_FAIL;
        }
        if (rc == POLL_DONE)
            return 0;
        if (rc == POLL_WAIT && now_s() <= deadline) {
            nap();
            continue;
        }
        if (rc == POLL_WAIT)
            late(e);
        shut_down(t);
        return -1;
    }
}

/* POLL_DONE once the last call on c's nonblocking communicator is enqueued
 * on its stream (mu held); then `after` runs (it records events). */
template <class After>
int enqueued(channel *c, int self, After after, pp_err *e)
{
    if (!c->comm)
        return pp_errf(e, "run aborted"), POLL_FAIL;
    ncclResult_t state = comm_state(c->comm);
    if (state == ncclInProgress)
        return POLL_WAIT;
    if (state != ncclSuccess)
        return link_error(c, self, state, nullptr, e), POLL_FAIL;
    return after(e);
}

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

/* --- sending ------------------------------------------------------------- */

/* A free buffer of c's send pool, reclaiming those whose send finished. */
slot *free_send_slot(channel *c, int self, pp_err *e, bool *failed)
{
    slot *found = nullptr;
    for (auto &s : c->out) {
        if (s.state == SLOT_POSTED) {
            int rc = event_done(s.done, c, self, e);
            if (rc == POLL_FAIL) {
                *failed = true;
                return nullptr;
            }
            if (rc == POLL_DONE)
                s.state = SLOT_FREE;
        }
        if (s.state == SLOT_FREE && !found)
            found = &s;
    }
    return found;
}

int nccl_send(pp_transport *tp, int src, int dst, int kind, int mb, const void *buf,
              size_t bytes, pp_err *e)
{
    nccl_tr *t = (nccl_tr *)tp->state;
    channel *c = chan(t, src, dst, kind);
    if (!c || !c->sends)
        return pp_errf(e, "stage %d: no NCCL link to send %ss to stage %d from this process",
                       src, kind_name(kind), dst);
    if (!t->ready)
        return pp_errf(e, "stage %d: the NCCL transport is not attached", src);
    if (t->aborted)
        return pp_errf(e, "run aborted");
    cudaStream_t stage = t->st[src].stream;
    double deadline = now_s() + t->timeout_s;
    int self = src;
    bool in_order;
    {
        std::lock_guard<std::mutex> lk(t->mu);
        size_t k = c->next_send;
        in_order = k < c->order.size() && c->order[k] == mb;
        if (!in_order)
            pp_errf(e, "stage %d: the %s of micro-batch %d is sent out of the IR's order "
                       "(the NCCL transport expects micro-batch %d next); %s",
                    src, kind_name(kind), mb, k < c->order.size() ? c->order[k] : -1, SHUT);
    }
    if (in_order && bytes > t->slot_bytes) {
        in_order = false;
        pp_errf(e, "stage %d: a message of %zu bytes exceeds the %zu of a stage boundary; %s",
                src, bytes, t->slot_bytes, SHUT);
    }
    if (!in_order) {
        shut_down(t); /* the peer would otherwise wait for a message that never comes */
        return -1;
    }
    /* 1. A pooled buffer: waits only when `capacity` sends are unreceived. */
    slot *s = nullptr;
    auto take = [&](pp_err *e) {
        bool failed = false;
        s = free_send_slot(c, self, e, &failed);
        if (failed)
            return (int)POLL_FAIL;
        if (!s)
            return (int)POLL_WAIT;
        cudaError_t rc = cudaMemcpyAsync(s->buf, buf, bytes, cudaMemcpyDeviceToDevice, stage);
        if (rc == cudaSuccess)
            rc = cudaEventRecord(s->ready, stage);
        if (rc != cudaSuccess)
            return cuda_error(rc, c, self, "copy into a message buffer", e), (int)POLL_FAIL;
        s->state = SLOT_STAGED;
        s->mb = mb;
        s->bytes = bytes;
        s->seq = c->next_send++;
        return (int)POLL_DONE;
    };
    auto full = [&](pp_err *e) {
        pp_errf(e, "stage %d: cannot send the %s of micro-batch %d to stage %d: %d earlier "
                   "messages still not received after %g s (peer dead or stuck); %s",
                src, kind_name(kind), mb, dst, t->capacity, t->timeout_s, SHUT);
    };
    if (wait_until(t, c, self, deadline, take, full, e) < 0)
        return -1;
    if (c->recvs)
        return 0; /* loopback: the receive posts send and receive together */

    /* 2. ncclSend on the link's stream once the copy is done. */
    auto late = [&](pp_err *e) {
        pp_errf(e, "stage %d: the send of the %s of micro-batch %d to stage %d was not "
                   "enqueued after %g s (peer dead or stuck); %s",
                src, kind_name(kind), mb, dst, t->timeout_s, SHUT);
    };
    auto post = [&](pp_err *e) {
        if (!c->comm)
            return pp_errf(e, "run aborted"), (int)POLL_FAIL;
        cudaError_t cr = cudaStreamWaitEvent(c->stream, s->ready, 0);
        if (cr != cudaSuccess)
            return cuda_error(cr, c, self, "cudaStreamWaitEvent", e), (int)POLL_FAIL;
        return posted(ncclSend(s->buf, bytes, ncclUint8, c->peer, c->comm, c->stream), c, self,
                      "ncclSend", e);
    };
    auto record = [&](pp_err *e) {
        cudaError_t cr = cudaEventRecord(s->done, c->stream);
        if (cr != cudaSuccess)
            return cuda_error(cr, c, self, "cudaEventRecord", e), (int)POLL_FAIL;
        s->state = SLOT_POSTED;
        return (int)POLL_DONE;
    };
    auto wait_enqueued = [&](pp_err *e) { return enqueued(c, self, record, e); };
    if (wait_until(t, c, self, deadline, post, late, e) < 0 ||
        wait_until(t, c, self, deadline, wait_enqueued, late, e) < 0)
        return -1;
    return 0;
}

/* --- receiving ----------------------------------------------------------- */

/* The staged send of the message at position seq (loopback), or NULL. */
slot *staged(channel *c, size_t seq)
{
    for (auto &s : c->out)
        if (s.state == SLOT_STAGED && s.seq == seq)
            return &s;
    return nullptr;
}

/* Receives the next message of c's order into target, recording done on
 * the link's stream after it, and waits on the host until it arrived. */
template <class Late>
int receive_next(nccl_tr *t, channel *c, int self, void *target, size_t bytes, cudaEvent_t done,
                 double deadline, Late late, pp_err *e)
{
    cudaStream_t stage = t->st[self].stream;
    slot *s = nullptr; /* loopback: the matching send */
    auto post = [&](pp_err *e) {
        if (!c->comm)
            return pp_errf(e, "run aborted"), (int)POLL_FAIL;
        if (c->sends) {
            s = staged(c, c->next_recv);
            if (!s)
                return (int)POLL_WAIT; /* the sending stage has not sent it yet */
            if (s->bytes != bytes)
                return pp_errf(e, "stage %d: a %zu-byte message from stage %d where %zu bytes "
                                  "are expected; %s",
                               self, s->bytes, c->src, bytes, SHUT),
                       (int)POLL_FAIL;
        }
        /* The link's stream must not overwrite target while the stage's
         * stream may still read it (the previous micro-batch's input, or a
         * parked message being copied out). */
        cudaError_t cr = cudaEventRecord(c->consumer_free, stage);
        if (cr == cudaSuccess)
            cr = cudaStreamWaitEvent(c->stream, c->consumer_free, 0);
        if (cr == cudaSuccess && s)
            cr = cudaStreamWaitEvent(c->stream, s->ready, 0);
        if (cr != cudaSuccess)
            return cuda_error(cr, c, self, "stream ordering", e), (int)POLL_FAIL;
        if (!s)
            return posted(ncclRecv(target, bytes, ncclUint8, c->peer, c->comm, c->stream), c,
                          self, "ncclRecv", e);
        /* Loopback: a one-rank communicator sends to itself; alone, the send
         * would wait for a receive that is never posted, so both go in one
         * group. */
        ncclResult_t r0 = ncclGroupStart();
        ncclResult_t r1 = ncclSend(s->buf, bytes, ncclUint8, c->peer, c->comm, c->stream);
        ncclResult_t r2 = ncclRecv(target, bytes, ncclUint8, c->peer, c->comm, c->stream);
        ncclResult_t r3 = ncclGroupEnd();
        ncclResult_t rc = r0 != ncclSuccess ? r0 : r1 != ncclSuccess ? r1 : r2 != ncclSuccess ? r2 : r3;
        return posted(rc, c, self, "ncclSend/ncclRecv to self", e);
    };
    auto record = [&](pp_err *e) {
        cudaError_t cr = cudaEventRecord(done, c->stream);
        if (cr == cudaSuccess && s)
            cr = cudaEventRecord(s->done, c->stream);
        if (cr != cudaSuccess)
            return cuda_error(cr, c, self, "cudaEventRecord", e), (int)POLL_FAIL;
        if (s)
            s->state = SLOT_POSTED;
        c->next_recv++;
        return (int)POLL_DONE;
    };
    auto wait_enqueued = [&](pp_err *e) { return enqueued(c, self, record, e); };
    auto arrived = [&](pp_err *e) { return event_done(done, c, self, e); };
    if (wait_until(t, c, self, deadline, post, late, e) < 0 ||
        wait_until(t, c, self, deadline, wait_enqueued, late, e) < 0 ||
        wait_until(t, c, self, deadline, arrived, late, e) < 0)
        return -1;
    return 0;
}

slot *parked_slot(channel *c, int state, int mb)
{
    for (auto &s : c->parked)
        if (s.state == state && (state == SLOT_FREE || s.mb == mb))
            return &s;
    return nullptr;
}

/* If micro-batch mb was parked, copies it into buf on the stage's stream
 * and frees its buffer (a later receive into it first waits for the stage's
 * stream, so the copy is done by then). 1: copied, 0: not parked, -1: error
 * (mu held). */
int take_parked(channel *c, int self, int mb, void *buf, size_t bytes, cudaStream_t stage,
                pp_err *e)
{
    slot *p = parked_slot(c, SLOT_PARKED, mb);
    if (!p)
        return 0;
    p->state = SLOT_FREE;
    cudaError_t cr = cudaStreamWaitEvent(stage, p->done, 0);
    if (cr == cudaSuccess)
        cr = cudaMemcpyAsync(buf, p->buf, bytes, cudaMemcpyDeviceToDevice, stage);
    if (cr != cudaSuccess)
        return cuda_error(cr, c, self, "copy out of a parked message", e);
    return 1;
}

int nccl_recv(pp_transport *tp, int dst, int src, int kind, int mb, void *buf, size_t bytes,
              pp_err *e)
{
    nccl_tr *t = (nccl_tr *)tp->state;
    channel *c = chan(t, src, dst, kind);
    if (!c || !c->recvs)
        return pp_errf(e, "stage %d: no NCCL link to receive %ss from stage %d in this process",
                       dst, kind_name(kind), src);
    if (!t->ready)
        return pp_errf(e, "stage %d: the NCCL transport is not attached", dst);
    cudaStream_t stage = t->st[(size_t)dst].stream;
    double deadline = now_s() + t->timeout_s;
    auto late = [&](pp_err *e) {
        pp_errf(e, "stage %d: no %s of micro-batch %d from stage %d after %g s (peer dead or "
                   "stuck); %s",
                dst, kind_name(kind), mb, src, t->timeout_s, SHUT);
    };
    /* Receive the sender's messages in its order, parking those wanted
     * later, until mb is there. */
    for (;;) {
        slot *park = nullptr; /* NULL: the next message is mb itself */
        int rc = 0;
        {
            std::lock_guard<std::mutex> lk(t->mu);
            if (t->aborted)
                return pp_errf(e, "run aborted");
            rc = take_parked(c, dst, mb, buf, bytes, stage, e);
            if (rc == 0 && c->next_recv >= c->order.size())
                rc = pp_errf(e, "stage %d: waits for the %s of micro-batch %d, which stage %d "
                                "does not send (IR); %s",
                             dst, kind_name(kind), mb, src, SHUT);
            if (rc == 0 && c->order[c->next_recv] != mb) {
                park = parked_slot(c, SLOT_FREE, 0);
                if (park) {
                    park->state = SLOT_POSTED; /* taken: the receive into it is ours */
                    park->mb = c->order[c->next_recv];
                } else {
                    rc = pp_errf(e, "stage %d: more than %d messages from stage %d arrived "
                                    "before the %s of micro-batch %d; %s",
                                 dst, t->capacity, src, kind_name(kind), mb, SHUT);
                }
            }
        }
        if (rc == 1)
            return 0;
        if (rc < 0) {
            shut_down(t);
            return -1;
        }
        if (park) {
            if (receive_next(t, c, dst, park->buf, bytes, park->done, deadline, late, e) < 0)
                return -1;
            std::lock_guard<std::mutex> lk(t->mu);
            park->state = SLOT_PARKED;
            continue;
        }
        if (receive_next(t, c, dst, buf, bytes, c->recv_done, deadline, late, e) < 0)
            return -1;
        /* The host saw it arrive; the stream wait also orders the stage's
         * later reads after the receive for CUDA. */
        cudaError_t cr = cudaStreamWaitEvent(stage, c->recv_done, 0);
        if (cr == cudaSuccess)
            return 0;
        cuda_error(cr, c, dst, "cudaStreamWaitEvent", e);
        shut_down(t);
        return -1;
    }
}

/* --- setup: communicators, streams, buffers ------------------------------ */

int make_slots(std::vector<slot> &pool, char **mem, int n, size_t stride, bool ready_events,
               cudaStream_t stream)
{
    /* Zeroed, in the link stream's order: the warm-up message sends the
     * first buffer as it is. */
    if (cudaMalloc((void **)mem, (size_t)n * stride) != cudaSuccess ||
        cudaMemsetAsync(*mem, 0, (size_t)n * stride, stream) != cudaSuccess)
        return -1;
    pool.assign((size_t)n, slot{});
    for (int i = 0; i < n; i++) {
        slot &s = pool[(size_t)i];
        s.buf = *mem + (size_t)i * stride;
        s.state = SLOT_FREE;
        if (cudaEventCreateWithFlags(&s.done, cudaEventDisableTiming) != cudaSuccess ||
            (ready_events && cudaEventCreateWithFlags(&s.ready, cudaEventDisableTiming) != cudaSuccess))
            return -1;
    }
    return 0;
}

int make_channel_resources(nccl_tr *t, channel &c, pp_err *e)
{
    if (cudaStreamCreateWithFlags(&c.stream, cudaStreamNonBlocking) != cudaSuccess ||
        cudaEventCreateWithFlags(&c.recv_done, cudaEventDisableTiming) != cudaSuccess ||
        cudaEventCreateWithFlags(&c.consumer_free, cudaEventDisableTiming) != cudaSuccess)
        return pp_errf(e, "NCCL transport: cannot create a stream or an event on GPU %d: %s",
                       t->device, cudaGetErrorString(cudaGetLastError()));
    if ((c.sends && make_slots(c.out, &c.send_mem, t->capacity, t->slot_bytes, true, c.stream) < 0) ||
        (c.recvs && make_slots(c.parked, &c.park_mem, t->capacity, t->slot_bytes, false, c.stream) < 0))
        return pp_errf(e, "NCCL transport: out of GPU memory for %d message buffers of %zu "
                          "bytes per link (%s)",
                       t->capacity, t->slot_bytes, cudaGetErrorString(cudaGetLastError()));
    return 0;
}

/* POLL_DONE when no communicator is still initialising or finalizing
 * (mu held). */
int all_settled(nccl_tr *t, int self, pp_err *e)
{
    int rc = POLL_DONE;
    for (auto &c : t->ch) {
        if (!c.comm)
            continue;
        ncclResult_t state = comm_state(c.comm);
        if (state == ncclInProgress)
            rc = POLL_WAIT;
        else if (state != ncclSuccess)
            return link_error(&c, self, state, nullptr, e), POLL_FAIL;
    }
    return rc;
}

/* Creates this process's communicators in one group (so that NCCL may
 * connect them in any order) and waits until none is still initialising. */
int init_comms(nccl_tr *t, int self, pp_err *e)
{
    int ncomms = 0;
    {
        std::lock_guard<std::mutex> lk(t->mu);
        ncclResult_t rc = ncclGroupStart();
        for (auto &c : t->ch) {
            if (!is_local(c) || rc != ncclSuccess)
                continue;
            ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
            config.blocking = 0;
            ncclResult_t r = ncclCommInitRankConfig(&c.comm, c.nranks, c.id, c.myrank, &config);
            if (r != ncclSuccess && r != ncclInProgress)
                rc = r;
            ncomms++;
        }
        ncclResult_t r = ncclGroupEnd();
        if (rc == ncclSuccess && r != ncclInProgress)
            rc = r;
        if (rc != ncclSuccess) {
            pp_errf(e, "stage %d: creating the NCCL communicators: %s%s%s", self,
                    ncclGetErrorString(rc), *ncclGetLastError(nullptr) ? ": " : "",
                    ncclGetLastError(nullptr));
            goto failed;
        }
    }
    if (ncomms == 0)
        return 0;
    {
        auto all_ready = [&](pp_err *e) { return all_settled(t, self, e); };
        auto late = [&](pp_err *e) {
            pp_errf(e, "stage %d: NCCL communicators with the neighbouring stages not ready after "
                       "%g s (a peer process did not start or is stuck); %s",
                    self, t->timeout_s, SHUT);
        };
        return wait_until(t, nullptr, self, now_s() + t->timeout_s, all_ready, late, e);
    }
failed:
    shut_down(t);
    return -1;
}

/* One message of full size over every link and direction, both ways at
 * once in one group, before any real one. NCCL connects two ranks for
 * point-to-point lazily, at their first send/receive, and connecting needs
 * both ranks: done here, while every rank is setting up anyway, it cannot
 * make a later send wait for its peer. It also proves every link works
 * before training starts. */
int warm_up(nccl_tr *t, int self, pp_err *e)
{
    {
        std::lock_guard<std::mutex> lk(t->mu);
        ncclResult_t rc = ncclGroupStart();
        for (auto &c : t->ch) {
            if (!c.comm || rc != ncclSuccess)
                continue;
            if (c.sends)
                rc = ncclSend(c.out[0].buf, t->slot_bytes, ncclUint8, c.peer, c.comm, c.stream);
            if (c.recvs && (rc == ncclSuccess || rc == ncclInProgress))
                rc = ncclRecv(c.parked[0].buf, t->slot_bytes, ncclUint8, c.peer, c.comm, c.stream);
            if (rc == ncclInProgress)
                rc = ncclSuccess;
        }
        ncclResult_t r = ncclGroupEnd();
        if (rc == ncclSuccess && r != ncclInProgress)
            rc = r;
        if (rc != ncclSuccess) {
            const char *last = ncclGetLastError(nullptr);
            pp_errf(e, "stage %d: first messages to the neighbouring stages: %s%s%s; %s", self,
                    ncclGetErrorString(rc), last && *last ? ": " : "", last ? last : "", SHUT);
        }
        if (rc != ncclSuccess)
            goto failed;
    }
    {
        auto late = [&](pp_err *e) {
            pp_errf(e, "stage %d: first messages to the neighbouring stages not through after "
                       "%g s (a peer process did not start or is stuck); %s",
                    self, t->timeout_s, SHUT);
        };
        double deadline = now_s() + t->timeout_s;
        auto enqueued_all = [&](pp_err *e) { return all_settled(t, self, e); };
        if (wait_until(t, nullptr, self, deadline, enqueued_all, late, e) < 0)
            return -1;
        for (auto &c : t->ch) {
            if (!is_local(c))
                continue;
            auto record = [&](pp_err *e) {
                cudaError_t cr = cudaEventRecord(c.recv_done, c.stream);
                return cr == cudaSuccess ? (int)POLL_DONE
                                         : (cuda_error(cr, &c, self, "cudaEventRecord", e),
                                            (int)POLL_FAIL);
            };
            auto through = [&](pp_err *e) { return event_done(c.recv_done, &c, self, e); };
            if (wait_until(t, &c, self, deadline, record, late, e) < 0 ||
                wait_until(t, &c, self, deadline, through, late, e) < 0)
                return -1;
        }
        return 0;
    }
failed:
    shut_down(t);
    return -1;
}

int setup(nccl_tr *t, int self, pp_err *e)
{
    int first = -1;
    t->slot_bytes = 0;
    for (int s = 0; s < t->P; s++) {
        const stage_info &si = t->st[(size_t)s];
        if (!si.local)
            continue;
        if (first >= 0 && si.device != t->st[(size_t)first].device)
            return pp_errf(e, "the loopback NCCL transport needs every stage on one GPU "
                              "(stage %d is on GPU %d, stage %d on GPU %d)",
                           first, t->st[(size_t)first].device, s, si.device);
        if (first < 0)
            first = s;
        if (si.msg_bytes > t->slot_bytes)
            t->slot_bytes = si.msg_bytes;
    }
    t->device = t->st[(size_t)first].device;
    t->slot_bytes = (t->slot_bytes + 255) / 256 * 256; /* each buffer 256-byte aligned */
    /* NCCL creates a communicator on the calling thread's current device. */
    if (cudaSetDevice(t->device) != cudaSuccess)
        return pp_errf(e, "NCCL transport: cudaSetDevice(%d): %s", t->device,
                       cudaGetErrorString(cudaGetLastError()));
    for (auto &c : t->ch)
        if (is_local(c) && make_channel_resources(t, c, e) < 0)
            return -1;
    if (init_comms(t, self, e) < 0 || warm_up(t, self, e) < 0)
        return -1;
    t->ready = true;
    return 0;
}

int nccl_attach(pp_transport *tp, int stage, const pp_backend_ops *b, void *backend_stage,
                pp_err *e)
{
    nccl_tr *t = (nccl_tr *)tp->state;
    if (b != &pp_backend_cuda)
        return pp_errf(e, "the NCCL transport needs the cuda backend (stage %d runs on %s)",
                       stage, b ? b->name : "none");
    if (stage < 0 || stage >= t->P || !t->st[(size_t)stage].local)
        return pp_errf(e, "stage %d is not run by this process's NCCL transport", stage);
    stage_info &si = t->st[(size_t)stage];
    if (si.attached)
        return pp_errf(e, "stage %d attached twice to the NCCL transport", stage);
    si.attached = true;
    si.stream = (cudaStream_t)pp_cuda_stage_stream(backend_stage);
    si.device = pp_cuda_stage_device(backend_stage);
    si.msg_bytes = b->boundary_floats(backend_stage) * sizeof(float);
    /* Communicators once every local stage is known: the loopback
     * transport needs them all on one device. */
    if (++t->nattached < t->nlocal)
        return 0;
    return setup(t, stage, e);
}

/* --- shutdown ------------------------------------------------------------ */

void nccl_abort(pp_transport *tp)
{
    shut_down((nccl_tr *)tp->state);
}

/* After a clean run: ncclCommFinalize flushes the communicators (the last
 * sends may still be on their way), then ncclCommDestroy frees them. A
 * failure or timeout here aborts instead, with a line on stderr since
 * destroy has no caller to tell. */
void finalize_comms(nccl_tr *t)
{
    pp_err e = {{0}};
    int self = t->self;
    bool ok = true;
    {
        std::lock_guard<std::mutex> lk(t->mu);
        for (auto &c : t->ch)
            if (c.comm) {
                ncclResult_t r = ncclCommFinalize(c.comm);
                if (r != ncclSuccess && r != ncclInProgress) {
                    pp_errf(&e, "stage %d: ncclCommFinalize: %s", self, ncclGetErrorString(r));
                    ok = false;
                }
            }
    }
    auto flushed = [&](pp_err *e) { return all_settled(t, self, e); };
    auto late = [&](pp_err *e) {
        pp_errf(e, "stage %d: NCCL communicators not flushed after %g s at the end of the run; %s",
                self, t->timeout_s, SHUT);
    };
    if (ok)
        ok = wait_until(t, nullptr, self, now_s() + t->timeout_s, flushed, late, &e) == 0;
    else
        shut_down(t);
    if (!ok) {
        fprintf(stderr, "ppsched: warning: %s\n", e.msg);
        return;
    }
    std::lock_guard<std::mutex> lk(t->mu);
    for (auto &c : t->ch)
        if (c.comm) {
            ncclCommDestroy(c.comm);
            c.comm = nullptr;
        }
}

void free_slots(std::vector<slot> &pool, char *mem)
{
    for (auto &s : pool) {
        if (s.ready)
            cudaEventDestroy(s.ready);
        if (s.done)
            cudaEventDestroy(s.done);
    }
    pool.clear();
    if (mem)
        cudaFree(mem);
}

void nccl_destroy(pp_transport *tp)
{
    nccl_tr *t = (nccl_tr *)tp->state;
    if (t->ready && !t->aborted)
        finalize_comms(t);
    shut_down(t); /* communicators still alive: never created fully, or failed */
    if (t->device >= 0)
        cudaSetDevice(t->device);
    for (auto &c : t->ch) {
        /* Finalized or aborted: nothing of NCCL's is left on the stream. */
        if (c.stream) {
            cudaStreamSynchronize(c.stream);
            cudaStreamDestroy(c.stream);
        }
        if (c.recv_done)
            cudaEventDestroy(c.recv_done);
        if (c.consumer_free)
            cudaEventDestroy(c.consumer_free);
        free_slots(c.out, c.send_mem);
        free_slots(c.parked, c.park_mem);
    }
    delete t;
    delete tp;
}

/* --- creation ------------------------------------------------------------ */

nccl_tr *new_transport(const pp_schedule *ir, int capacity, double timeout_s, pp_err *e)
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

pp_transport *wrap(nccl_tr *t, pp_err *e)
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

} // namespace

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
