/* Private to exec/cuda/: the NCCL transport's state (links and directions
 * as channels, pooled message slots) and the failure and waiting helpers
 * shared by transport_nccl.cu, nccl_setup.cu and nccl_sendrecv.cu. */
#ifndef PP_NCCL_CHANNEL_CUH
#define PP_NCCL_CHANNEL_CUH

#include <cuda_runtime.h>
#include <nccl.h>

#include <atomic>
#include <mutex>
#include <vector>

extern "C" {
#include "model/backend.h"
#include "error.h"
#include "ir.h"
#include "transport/transport.h"
}

namespace pp_nccl {

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

/* --- helpers (transport_nccl.cu) ---------------------------------------- */

double now_s();
void nap();
bool is_local(const channel &c);
const char *kind_name(int kind);
channel *chan(nccl_tr *t, int src, int dst, int kind);

/* --- failure (transport_nccl.cu) ---------------------------------------- */

void shut_down(nccl_tr *t);

const char *const SHUT = "NCCL communicators closed with ncclCommAbort";

ncclResult_t comm_state(ncclComm_t comm);
int link_error(channel *c, int self, ncclResult_t state, const char *what, pp_err *e);
int comm_error(channel *c, int self, pp_err *e);
int cuda_error(cudaError_t rc, channel *c, int self, const char *what, pp_err *e);

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

/* transport_nccl.cu */
int posted(ncclResult_t rc, channel *c, int self, const char *what, pp_err *e);
int event_done(cudaEvent_t ev, channel *c, int self, pp_err *e);

/* --- the pp_transport table: nccl_sendrecv.cu, nccl_setup.cu ----------- */

int nccl_send(pp_transport *tp, int src, int dst, int kind, int mb, const void *buf,
              size_t bytes, pp_err *e);
int nccl_recv(pp_transport *tp, int dst, int src, int kind, int mb, void *buf, size_t bytes,
              pp_err *e);
int nccl_attach(pp_transport *tp, int stage, const pp_backend_ops *b, void *backend_stage,
                pp_err *e);
void nccl_abort(pp_transport *tp);
void nccl_destroy(pp_transport *tp);

} // namespace pp_nccl

#endif
