/* The NCCL transport's setup and teardown: streams, message pools and
 * communicators per link and direction, the warm-up message, attach, and
 * finalize or abort at the end. */
#include <cuda_runtime.h>
#include <nccl.h>

#include <cstdio>
#include <mutex>
#include <vector>

#include "nccl_channel.cuh"
#include "cuda_backend.h"

namespace pp_nccl {

/* --- setup: communicators, streams, buffers ------------------------------ */

static int make_slots(std::vector<slot> &pool, char **mem, int n, size_t stride, bool ready_events,
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

static int make_channel_resources(nccl_tr *t, channel &c, pp_err *e)
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
static int all_settled(nccl_tr *t, int self, pp_err *e)
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
static int init_comms(nccl_tr *t, int self, pp_err *e)
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
static int warm_up(nccl_tr *t, int self, pp_err *e)
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

static int setup(nccl_tr *t, int self, pp_err *e)
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
static void finalize_comms(nccl_tr *t)
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

static void free_slots(std::vector<slot> &pool, char *mem)
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

} // namespace pp_nccl
