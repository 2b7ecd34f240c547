/* SM partitions of one GPU as CUDA green contexts (DESIGN §6, NOTES-GPU).
 * C++-internal: included by the .cu files of exec/cuda/ only.
 *
 * Stages that share a device with `partitions` partitions each get one
 * group of an even split of its SMs. The split (one resource descriptor
 * per group) is made once per (device, partitions) and kept for the
 * process; a stage holds a green context of its group for itself (two
 * stage objects on one group, e.g. a training stage and its evaluation
 * twin driven by another thread, get two green contexts on the same SMs,
 * because a green context must not be used by two threads at once).
 *
 * The driver API is reached through cudart's cudaGetDriverEntryPointByVersion
 * instead of linking libcuda: a program linked against libcuda does not even
 * start where no driver is installed (the CI machines), and the tests must
 * run there and skip. */
#ifndef PP_GREEN_CTX_H
#define PP_GREEN_CTX_H

#include <cuda.h>

extern "C" {
#include "error.h"
}

/* One stage's share of a partitioned device. */
struct pp_green {
    int device, partition, partitions;
    int sms;          /* SMs of the partition */
    CUgreenCtx green; /* held by this stage alone until pp_green_close */
    CUcontext ctx;    /* cuCtxFromGreenCtx(green): made current on a thread,
                         that thread's launches run in the partition */
    CUstream stream;  /* non-blocking stream of the partition */
};

/* Partition `partition` of `partitions` on `device`: a green context of
 * that SM group, its CUcontext and a new stream in it. 0, or -1 with e
 * holding one line (too few SMs, no driver support, ...). */
int pp_green_open(int device, int partition, int partitions, pp_green *out, pp_err *e);

/* Destroys the stream (its work must be finished) and hands the green
 * context back to the table for the next stage on that group. */
void pp_green_close(pp_green *g);

/* Destroys the green contexts no stage holds. Optional: the table otherwise
 * lives as long as the process and the driver frees it at exit. Call only
 * after every partitioned stage is closed if everything is to go. */
void pp_green_release_all(void);

/* The calling thread's current driver context (NULL if none or unknown),
 * and making one current: for entry points that switch to a stage's
 * partition for the duration of a call. */
CUcontext pp_green_current(void);
void pp_green_make_current(CUcontext ctx);

#endif
