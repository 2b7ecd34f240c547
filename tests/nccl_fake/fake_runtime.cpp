/* A CPU stand-in for the parts of the CUDA runtime and NCCL that
 * exec/cuda/transport_nccl.cu calls, so that test_nccl_logic can run the
 * transport's own code (ordering by the IR, parking, pooled sends,
 * timeouts, abort) where there is no GPU. "Device" memory is host memory.
 * The ranks of a test are threads of one process and share this state, as
 * processes on one machine share its GPUs.
 *
 * Work runs when some thread calls into the fake: each call that touches
 * a stream, an event or a communicator first moves every stream forward
 * as far as it can go. The transport polls in all its waits, so nothing
 * it waits for is left standing.
 *
 * The rules it models, each as the real thing has it:
 *   CUDA
 *   - A stream runs its work in order. An event marks the point a stream
 *     had reached at cudaEventRecord and is complete once the stream is
 *     past it; an event never recorded is complete. cudaStreamWaitEvent
 *     holds the stream's later work until the event's point.
 *   - cudaMalloc returns memory that is not zeroed (filled with 0xa5).
 *   - The NULL stream stands for the host: work on it runs at once, on
 *     the calling thread. The fake backend gives every stage the NULL
 *     stream, because the CPU backend computes synchronously. A wait of
 *     the NULL stream on an event that is not complete fails the test: the
 *     stage's next computation would read the message before it is there.
 *   NCCL
 *   - Nonblocking communicators only (config.blocking = 0).
 *     ncclCommInitRankConfig returns ncclInProgress, and the state
 *     (ncclCommGetAsyncError) reads ncclInProgress until every rank of the
 *     unique id has called it. An operation issued before the state read
 *     ncclSuccess fails the test.
 *   - Issuing (ncclSend/ncclRecv outside a group, or ncclGroupEnd) leaves
 *     the state at ncclInProgress for one more read: the enqueue has not
 *     finished (NCCL may finish at once; the fake never does, so the
 *     transport's wait for it always runs). Issuing again on that communicator before the state read
 *     ncclSuccess fails the test (NCCL's rule for nonblocking
 *     communicators).
 *   - Matching: the k-th send from rank a to rank b of a communicator
 *     meets the k-th receive of b from a, in the order the calls were
 *     issued (no tags). The sizes must agree; otherwise the test fails.
 *   - A send and its receive complete together, once both have reached
 *     the front of their streams. That is the strictest case: NCCL may let
 *     a small send finish into the peer's buffers before the receive runs;
 *     code that cannot deadlock under the strict rule cannot under the
 *     loose one.
 *   - Groups (ncclGroupStart/End, nested, per thread) issue their
 *     operations at the outermost ncclGroupEnd, as one piece of work per
 *     stream that completes when all of its sends and receives have. So a
 *     send to oneself completes only when grouped with its receive.
 *   - ncclCommFinalize: the state reads ncclInProgress until the
 *     communicator's operations have completed. ncclCommDestroy with
 *     operations outstanding fails the test.
 *   - ncclCommAbort: this rank's operations on the communicator end at
 *     once (the streams go on) and the handle is gone. The peer is not
 *     told: its operations never match, as with a peer that hangs. (A
 *     peer process that dies may also surface in NCCL as an asynchronous
 *     error once a network connection breaks; the fake never reports one,
 *     see below.)
 * What it does not model:
 *   - NCCL's lazy connection of two ranks at their first send/receive,
 *     which needs both ranks at once (the transport's warm-up exists for
 *     it; here the warm-up is one more message);
 *   - GPU execution: kernels running concurrently with the host, NCCL
 *     kernels occupying SMs next to compute kernels (co-scheduling: a
 *     send kernel that spins until its receive runs holds SMs that the
 *     stage's compute may need), and a stage stream that runs behind its host thread. With the NULL
 *     stage stream, a missing ordering between a stage's stream and a
 *     link's stream (the transport's `ready` and `consumer_free` events)
 *     goes unnoticed;
 *   - failures: no CUDA or NCCL call fails and no asynchronous error
 *     (ncclRemoteError, ...) is ever reported, so the transport's error
 *     paths are reached only through timeouts and aborts;
 *   - NCCL joining the streams of a group (each stream's share runs on
 *     its own here), and NCCL's rule that two threads must not issue
 *     operations on communicators of one device at once (the transport's
 *     mutex keeps one rank's calls apart; the ranks here share no
 *     communicator handle);
 *   - devices (cudaSetDevice does nothing), blocking communicators,
 *     collectives, data types other than bytes.
 * A test "fails" here with a line on stderr and abort(): the rule broken
 * is one the real libraries would answer with a hang or undefined
 * behaviour, not an error code. */
#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

struct fake_comm;
struct fake_stream;

/* One send or receive. */
struct p2p {
    bool is_send;
    fake_comm *comm;
    int from, to; /* ranks */
    char *buf;
    size_t bytes;
    bool launched; /* its work reached the front of its stream */
    bool done;
};

enum work_kind { WORK_COPY, WORK_WAIT, WORK_P2P };

/* One piece of a stream's work. */
struct work {
    work_kind kind;
    char *dst;          /* WORK_COPY: memmove from src, or memset with value when src is NULL */
    const char *src;
    size_t bytes;
    int value;
    fake_stream *until; /* WORK_WAIT: until this stream has finished `ticket` pieces */
    long ticket;
    std::vector<std::unique_ptr<p2p>> ops; /* WORK_P2P: one call's or one group's */
};

struct fake_stream {
    std::deque<work> queue;
    long issued, finished; /* pieces of work so far */
};

struct fake_event {
    fake_stream *stream; /* NULL: complete */
    long ticket;
};

/* What the ranks of one communicator share: who joined, and the issued
 * sends and receives not yet matched, per (from, to), in issue order. */
struct clique {
    int nranks, joined, members;
    std::map<std::pair<int, int>, std::deque<p2p *>> sends, recvs;
};

struct fake_comm {
    std::string id;
    clique *cl;
    int rank;
    bool enqueueing; /* issued; the state has not read ncclSuccess since */
    bool finalizing;
    long outstanding; /* operations issued and not completed */
};

namespace {

std::mutex mu; /* guards everything below; every entry point takes it */
std::set<fake_stream *> streams;
std::map<std::string, clique *> cliques; /* by unique id */

[[noreturn]] void fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "fake CUDA/NCCL: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    abort();
}

/* --- progress ------------------------------------------------------------ */

bool event_complete(const fake_event *ev)
{
    return !ev->stream || ev->stream->finished >= ev->ticket;
}

void complete(p2p *op)
{
    op->done = true;
    op->comm->outstanding--;
}

/* Matches the oldest send and receive from `from` to `to` of a clique
 * when both are running: their bytes move and both complete. */
bool match_head(clique *cl, std::pair<int, int> from_to)
{
    std::deque<p2p *> &s = cl->sends[from_to], &r = cl->recvs[from_to];
    if (s.empty() || r.empty() || !s.front()->launched || !r.front()->launched)
        return false;
    p2p *send = s.front(), *recv = r.front();
    if (send->bytes != recv->bytes)
        fail("a %zu-byte send from rank %d meets a %zu-byte receive on rank %d", send->bytes,
             send->from, recv->bytes, recv->to);
    memmove(recv->buf, send->buf, send->bytes);
    s.pop_front();
    r.pop_front();
    complete(send);
    complete(recv);
    return true;
}

/* True when w is finished (it is at the front of its stream). */
bool run_work(work &w)
{
    switch (w.kind) {
    case WORK_COPY:
        if (w.src)
            memmove(w.dst, w.src, w.bytes);
        else
            memset(w.dst, w.value, w.bytes);
        return true;
    case WORK_WAIT: {
        fake_event ev = {w.until, w.ticket};
        return event_complete(&ev);
    }
    case WORK_P2P:
        break;
    }
    bool all_done = true;
    for (auto &op : w.ops) {
        op->launched = true;
        if (!op->done)
            match_head(op->comm->cl, {op->from, op->to});
        all_done = all_done && op->done;
    }
    return all_done;
}

/* Runs everything that can run (mu held). */
void progress()
{
    for (bool moved = true; moved;) {
        moved = false;
        for (fake_stream *s : streams)
            while (!s->queue.empty() && run_work(s->queue.front())) {
                s->queue.pop_front();
                s->finished++;
                moved = true;
            }
    }
}

/* Puts w on stream s, or runs it at once on the NULL stream (mu held). */
void enqueue(cudaStream_t s, work w)
{
    if (!s) {
        if (w.kind != WORK_COPY)
            fail("NCCL work on the NULL stream");
        run_work(w);
        return;
    }
    s->queue.push_back(std::move(w));
    s->issued++;
    progress();
}

work copy_work(void *dst, const void *src, size_t bytes, int value)
{
    work w{};
    w.kind = WORK_COPY;
    w.dst = (char *)dst;
    w.src = (const char *)src;
    w.bytes = bytes;
    w.value = value;
    return w;
}

/* --- communicators ------------------------------------------------------- */

/* Forgets comm; the clique goes with its last member (mu held). */
void release_comm(fake_comm *comm)
{
    clique *cl = comm->cl;
    if (--cl->members == 0) {
        cliques.erase(comm->id);
        delete cl;
    }
    delete comm;
}

/* Ends every operation of comm at once, matched or not (mu held). */
void drop_operations(fake_comm *comm)
{
    for (auto *queues : {&comm->cl->sends, &comm->cl->recvs})
        for (auto &q : *queues)
            for (auto it = q.second.begin(); it != q.second.end();)
                it = (*it)->comm == comm ? q.second.erase(it) : it + 1;
    for (fake_stream *s : streams)
        for (work &w : s->queue)
            for (auto &op : w.ops)
                if (op->comm == comm && !op->done)
                    complete(op.get());
}

/* The group being built on this thread: NCCL keeps it per thread. */
thread_local int group_depth;
thread_local bool group_used;
thread_local std::vector<std::pair<cudaStream_t, std::unique_ptr<p2p>>> group_ops;

/* Issues ops on their streams, one piece of work per stream, in the
 * order they were called: from here on they match (mu held). */
void issue(std::vector<std::pair<cudaStream_t, std::unique_ptr<p2p>>> &ops)
{
    std::vector<std::pair<cudaStream_t, work>> per_stream;
    for (auto &so : ops) {
        p2p *op = so.second.get();
        clique *cl = op->comm->cl;
        (op->is_send ? cl->sends : cl->recvs)[{op->from, op->to}].push_back(op);
        op->comm->enqueueing = true;
        size_t i = 0;
        while (i < per_stream.size() && per_stream[i].first != so.first)
            i++;
        if (i == per_stream.size()) {
            work w{};
            w.kind = WORK_P2P;
            per_stream.emplace_back(so.first, std::move(w));
        }
        per_stream[i].second.ops.push_back(std::move(so.second));
    }
    ops.clear();
    for (auto &sw : per_stream)
        enqueue(sw.first, std::move(sw.second));
}

ncclResult_t add_p2p(bool is_send, const void *buf, size_t bytes, int peer, ncclComm_t comm,
                     cudaStream_t stream)
{
    std::lock_guard<std::mutex> lk(mu);
    clique *cl = comm->cl;
    if (cl->joined < cl->nranks)
        fail("%s issued on rank %d before its communicator was initialised",
             is_send ? "ncclSend" : "ncclRecv", comm->rank);
    if (comm->enqueueing)
        fail("%s issued on rank %d while the previous operation was still being enqueued "
             "(ncclInProgress)",
             is_send ? "ncclSend" : "ncclRecv", comm->rank);
    if (peer < 0 || peer >= cl->nranks)
        return ncclInvalidArgument;
    auto op = std::make_unique<p2p>();
    *op = p2p{is_send, comm, is_send ? comm->rank : peer, is_send ? peer : comm->rank,
              (char *)buf, bytes, false, false};
    comm->outstanding++;
    std::vector<std::pair<cudaStream_t, std::unique_ptr<p2p>>> one;
    one.emplace_back(stream, std::move(op));
    if (group_depth > 0) {
        group_ops.push_back(std::move(one[0]));
        group_used = true;
        return ncclSuccess;
    }
    issue(one);
    return ncclInProgress;
}

} // namespace

/* --- CUDA ---------------------------------------------------------------- */

extern "C" {

cudaError_t cudaSetDevice(int)
{
    return cudaSuccess;
}

cudaError_t cudaGetLastError(void)
{
    return cudaSuccess;
}

const char *cudaGetErrorString(cudaError_t error)
{
    return error == cudaSuccess ? "no error" : "fake CUDA error";
}

cudaError_t cudaMalloc(void **ptr, size_t bytes)
{
    *ptr = malloc(bytes ? bytes : 1);
    if (!*ptr)
        return cudaErrorMemoryAllocation;
    memset(*ptr, 0xa5, bytes);
    return cudaSuccess;
}

cudaError_t cudaFree(void *ptr)
{
    free(ptr);
    return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void *ptr, int value, size_t bytes, cudaStream_t stream)
{
    std::lock_guard<std::mutex> lk(mu);
    enqueue(stream, copy_work(ptr, nullptr, bytes, value));
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind,
                            cudaStream_t stream)
{
    std::lock_guard<std::mutex> lk(mu);
    enqueue(stream, copy_work(dst, src, bytes, 0));
    return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned)
{
    std::lock_guard<std::mutex> lk(mu);
    *stream = new fake_stream{};
    streams.insert(*stream);
    return cudaSuccess;
}

/* CUDA would finish a destroyed stream's work later; the fake cannot (its
 * buffers may be gone), and the transport synchronizes first anyway. */
cudaError_t cudaStreamDestroy(cudaStream_t stream)
{
    std::lock_guard<std::mutex> lk(mu);
    progress();
    if (!stream->queue.empty())
        fail("a stream destroyed with %zu pieces of work left", stream->queue.size());
    streams.erase(stream);
    delete stream;
    return cudaSuccess;
}

/* CUDA would wait forever for work that cannot finish; the fake gives up
 * after a while so that the test fails instead of hanging. */
cudaError_t cudaStreamSynchronize(cudaStream_t stream)
{
    auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    for (;;) {
        {
            std::lock_guard<std::mutex> lk(mu);
            progress();
            if (!stream || stream->queue.empty())
                return cudaSuccess;
        }
        if (std::chrono::steady_clock::now() > give_up)
            fail("cudaStreamSynchronize would hang: the stream's work cannot finish");
        std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
}

cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned)
{
    std::lock_guard<std::mutex> lk(mu);
    if (!stream) {
        progress();
        if (!event_complete(event))
            fail("a stage's stream waits for an event not complete yet: the stage would read "
                 "the buffer before the transport's work on it is done");
        return cudaSuccess;
    }
    work w{};
    w.kind = WORK_WAIT;
    w.until = event->stream;
    w.ticket = event->ticket;
    enqueue(stream, std::move(w));
    return cudaSuccess;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned)
{
    *event = new fake_event{nullptr, 0};
    return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t event)
{
    delete event;
    return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream)
{
    std::lock_guard<std::mutex> lk(mu);
    event->stream = stream;
    event->ticket = stream ? stream->issued : 0;
    return cudaSuccess;
}

cudaError_t cudaEventQuery(cudaEvent_t event)
{
    std::lock_guard<std::mutex> lk(mu);
    progress();
    return event_complete(event) ? cudaSuccess : cudaErrorNotReady;
}

/* --- NCCL ---------------------------------------------------------------- */

ncclResult_t ncclGetUniqueId(ncclUniqueId *id)
{
    static long next;
    std::lock_guard<std::mutex> lk(mu);
    memset(id, 0, sizeof *id);
    snprintf(id->internal, sizeof id->internal, "fake-nccl-id-%ld", ++next);
    return ncclSuccess;
}

ncclResult_t ncclCommInitRankConfig(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank,
                                    ncclConfig_t *config)
{
    std::lock_guard<std::mutex> lk(mu);
    if (!config || config->blocking != 0)
        fail("only nonblocking communicators are modelled (config.blocking = 0)");
    if (nranks < 1 || rank < 0 || rank >= nranks)
        return ncclInvalidArgument;
    std::string key(id.internal, sizeof id.internal);
    clique *&cl = cliques[key];
    if (!cl)
        cl = new clique{nranks, 0, 0, {}, {}};
    if (cl->nranks != nranks)
        fail("ranks disagree on the size of a communicator (%d and %d)", cl->nranks, nranks);
    cl->joined++;
    cl->members++;
    *comm = new fake_comm{key, cl, rank, false, false, 0};
    if (group_depth > 0)
        group_used = true;
    return ncclInProgress;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t *state)
{
    std::lock_guard<std::mutex> lk(mu);
    progress();
    bool initialising = comm->cl->joined < comm->cl->nranks;
    bool flushing = comm->finalizing && comm->outstanding > 0;
    *state = initialising || comm->enqueueing || flushing ? ncclInProgress : ncclSuccess;
    comm->enqueueing = false; /* an issue reads ncclInProgress once */
    return ncclSuccess;
}

ncclResult_t ncclCommFinalize(ncclComm_t comm)
{
    std::lock_guard<std::mutex> lk(mu);
    comm->finalizing = true;
    return ncclInProgress;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm)
{
    std::lock_guard<std::mutex> lk(mu);
    progress();
    if (comm->outstanding > 0)
        fail("ncclCommDestroy on rank %d with %ld operations outstanding", comm->rank,
             comm->outstanding);
    release_comm(comm);
    return ncclSuccess;
}

ncclResult_t ncclCommAbort(ncclComm_t comm)
{
    std::lock_guard<std::mutex> lk(mu);
    drop_operations(comm);
    progress();
    release_comm(comm);
    return ncclSuccess;
}

const char *ncclGetErrorString(ncclResult_t result)
{
    switch (result) {
    case ncclSuccess:
        return "no error";
    case ncclInProgress:
        return "NCCL operation in progress";
    case ncclInvalidArgument:
        return "invalid argument";
    default:
        return "fake NCCL error";
    }
}

const char *ncclGetLastError(ncclComm_t)
{
    return "";
}

ncclResult_t ncclSend(const void *buf, size_t count, ncclDataType_t, int peer, ncclComm_t comm,
                      cudaStream_t stream)
{
    return add_p2p(true, buf, count, peer, comm, stream);
}

ncclResult_t ncclRecv(void *buf, size_t count, ncclDataType_t, int peer, ncclComm_t comm,
                      cudaStream_t stream)
{
    return add_p2p(false, buf, count, peer, comm, stream);
}

ncclResult_t ncclGroupStart(void)
{
    group_depth++;
    return ncclSuccess;
}

ncclResult_t ncclGroupEnd(void)
{
    if (group_depth == 0)
        return ncclInvalidUsage;
    if (--group_depth > 0)
        return ncclSuccess;
    std::lock_guard<std::mutex> lk(mu);
    bool used = group_used;
    group_used = false;
    issue(group_ops);
    return used ? ncclInProgress : ncclSuccess;
}

} // extern "C"
