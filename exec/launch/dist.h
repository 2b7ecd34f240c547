/* exec/launch/: how the processes of a multi-process run find and reach
 * each other: the launcher's environment (this header), the rendezvous
 * store over TCP, a shared directory or MPI (store.h), and blocking TCP
 * sockets with deadlines (net.h) that the socket transport also uses.
 * Includes only common/ headers: it knows nothing of the model, the
 * runtime or the transports.
 *
 * Multi-process runs (one process per stage): who this process is, how the
 * processes meet, and how rank 0 collects what every stage measured. */
#ifndef PP_DIST_H
#define PP_DIST_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "store.h"
#include "timeline.h"

typedef struct {
    int rank, world, local_rank;
    char source[48]; /* the variables they came from, e.g. "SLURM_PROCID/SLURM_NTASKS" */
    int under_mpirun; /* Open MPI, MPICH or Intel MPI started this process */
} pp_dist_env;

/* Reads the launcher's environment, first match wins: torchrun-style
 * RANK/WORLD_SIZE (LOCAL_RANK), Open MPI's OMPI_COMM_WORLD_RANK/SIZE
 * (LOCAL_RANK), MPICH/Intel MPI's PMI_RANK/PMI_SIZE (MPI_LOCALRANKID),
 * Slurm's SLURM_PROCID/SLURM_NTASKS (SLURM_LOCALID). A world of 1 when
 * none is set; an error for values that do not make sense. */
int pp_dist_env_detect(pp_dist_env *d, pp_err *e);

/* The rendezvous when --rendezvous is not given: $PPSCHED_RENDEZVOUS,
 * else tcp://$MASTER_ADDR:$MASTER_PORT, else "mpi" under mpirun in a build
 * with MPI; otherwise NULL with an error saying what to give. */
const char *pp_dist_rendezvous(const pp_dist_env *d, char *buf, size_t n, pp_err *e);

/* What a rank reports besides its actions (the last stage's is the run's). */
typedef struct {
    int32_t stage, steps;
    double last_loss, tokens, elapsed_s;
} pp_dist_summary;

/* Collective. Every rank sends its stage's measured actions; rank 0 adds
 * the other stages' to tl (which holds its own) and gets the last stage's
 * summary in *last. */
int pp_dist_gather_timeline(pp_store *st, pp_timeline *tl, const pp_dist_summary *mine,
                            pp_dist_summary *last, pp_err *e);

#endif
