/* The NCCL transport's send and receive: sends copied into pooled buffers,
 * receives posted in the sender's order with early messages parked, every
 * host wait polling against a deadline (loopback: both posted by the receive). */
#include <cuda_runtime.h>
#include <nccl.h>

#include <mutex>
#include <vector>

#include "nccl_channel.cuh"

namespace pp_nccl {

/* --- sending ------------------------------------------------------------- */

/* A free buffer of c's send pool, reclaiming those whose send finished. */
static slot *free_send_slot(channel *c, int self, pp_err *e, bool *failed)
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
static slot *staged(channel *c, size_t seq)
{
    for (auto &s : c->out)
        if (s.state == SLOT_STAGED && s.seq == seq)
            return &s;
    return nullptr;
}

/* Receives the next message of c's order into target, recording done on
 * the link's stream after it, and waits on the host until it arrived. */
template <class Late>
static int receive_next(nccl_tr *t, channel *c, int self, void *target, size_t bytes,
                        cudaEvent_t done, double deadline, Late late, pp_err *e)
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

static slot *parked_slot(channel *c, int state, int mb)
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
static int take_parked(channel *c, int self, int mb, void *buf, size_t bytes, cudaStream_t stage,
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

} // namespace pp_nccl
