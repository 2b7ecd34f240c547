/* The NCCL transport (DESIGN §6): stages on different GPUs, one process per
 * stage, behind the pp_transport table of transport.h. Plain C: no CUDA or
 * NCCL type crosses this header. Built only with NCCL (PPSCHED_HAVE_NCCL).
 *
 * Lowering. Rank r runs stage r of P. Every link (s, s+1) has two 2-rank
 * communicators, one per direction (activations s -> s+1, gradients
 * s+1 -> s), each with its own CUDA stream on either side, so traffic in one
 * direction never queues behind the other. NCCL has no tags: messages on a
 * communicator match in the order they were posted. The receiver therefore
 * posts its receives in the SENDER's order, which both sides read off the
 * IR (activations of link (s, s+1): the F actions of stage s in list order;
 * gradients: the B or I actions of stage s+1). A message that arrives
 * before the receiver wants it is parked in a device buffer of the
 * transport.
 *
 * Sends never wait for the peer: send() copies the runtime's buffer into a
 * pooled message buffer on the stage's stream and posts ncclSend on the
 * link's stream; the buffer returns to the pool when the send completed.
 * Only when `capacity` sends of one link are still unreceived does a send
 * wait, for the oldest. Receives wait on the host, polling, so that a dead
 * peer, an NCCL error or pp_transport.abort ends the wait with a message
 * instead of a hang: every wait checks ncclCommGetAsyncError and a
 * deadline of timeout_s; on failure all communicators of the transport are
 * aborted (ncclCommAbort).
 *
 * The stage must run on the CUDA backend: attach() takes the stage's stream
 * and device (cuda_backend.h); communicators are created there. */
#ifndef PP_TRANSPORT_NCCL_H
#define PP_TRANSPORT_NCCL_H

#ifdef __cplusplus
extern "C" {
#endif

#include "error.h"
#include "ir.h"
#include "transport/transport.h"

/* Bytes of the unique-id blob for a P-stage pipeline: 2 (P - 1) NCCL
 * unique ids of 128 bytes (one per link and direction). */
int pp_nccl_ids_bytes(int P);

/* Rank 0 makes the blob (out: pp_nccl_ids_bytes(P) bytes); the caller hands
 * the same bytes to every rank (MPI_Bcast, a file, a socket). Rank 0's
 * process must live until every rank has created its communicators. */
int pp_nccl_make_ids(int P, void *out, pp_err *e);

/* The transport of rank `rank` (= the stage it runs) of a P-stage pipeline,
 * P = ir->info.stages. `ids` comes from pp_nccl_make_ids on rank 0 (copied;
 * the IR must outlive the transport). At most `capacity` messages in
 * flight per link and direction (pp_schedule_link_slots); a wait
 * longer than timeout_s fails the run. Communicators are created when the
 * runtime attaches the local stage (pp_run_config.local_first = rank,
 * local_count = 1); every rank must get that far within timeout_s. */
int pp_transport_nccl_create(const pp_schedule *ir, int rank, const void *ids, int capacity,
                             double timeout_s, pp_transport **out, pp_err *e);

/* Every stage in this process, on one GPU (tests): each link and direction
 * is a one-rank communicator that sends to itself (NCCL refuses two ranks
 * on one GPU). A send only stages the message; the matching receive posts
 * the send and the receive together in one group. Ordering, parking, pools,
 * timeouts and error handling are the multi-process code. */
int pp_transport_nccl_loopback_create(const pp_schedule *ir, int capacity, double timeout_s,
                                      pp_transport **out, pp_err *e);

#ifdef __cplusplus
}
#endif

#endif
