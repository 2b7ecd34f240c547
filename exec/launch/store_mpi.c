/* The rendezvous over MPI_COMM_WORLD (--rendezvous mpi): for runs started
 * by mpirun/mpiexec. MPI only introduces the processes to each other; the
 * data moves over NCCL or sockets. Built when CMake found MPI. */
#include <stdlib.h>
#include <string.h>

#include "store_impl.h"

#ifdef PPSCHED_HAVE_MPI
#include <mpi.h>

static int mpi_fail(pp_err *e, const char *what, int rc)
{
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    return pp_errf(e, "rendezvous mpi: %s: %s", what, msg);
}

static int mpi_bcast(pp_store *st, void *buf, size_t n, pp_err *e)
{
    (void)st;
    if (n > (size_t)1 << 30)
        return pp_errf(e, "rendezvous mpi: broadcast of %zu bytes is too large", n);
    int rc = MPI_Bcast(buf, (int)n, MPI_BYTE, 0, MPI_COMM_WORLD);
    return rc == MPI_SUCCESS ? 0 : mpi_fail(e, "MPI_Bcast", rc);
}

static int mpi_gather(pp_store *st, const void *mine, size_t n, void **all, size_t *sizes,
                      pp_err *e)
{
    if (n > (size_t)1 << 30)
        return pp_errf(e, "rendezvous mpi: gather of %zu bytes is too large", n);
    int len = (int)n, *lens = NULL, *offs = NULL, total = 0;
    char *flat = NULL;
    if (st->rank == 0) {
        lens = calloc((size_t)st->world, sizeof *lens);
        offs = calloc((size_t)st->world, sizeof *offs);
        if (!lens || !offs) {
            free(lens);
            free(offs);
            return pp_errf(e, "out of memory");
        }
    }
    int rc = MPI_Gather(&len, 1, MPI_INT, lens, 1, MPI_INT, 0, MPI_COMM_WORLD);
    if (rc != MPI_SUCCESS) {
        free(lens);
        free(offs);
        return mpi_fail(e, "MPI_Gather", rc);
    }
    for (int r = 0; st->rank == 0 && r < st->world; r++) {
        offs[r] = total;
        total += lens[r];
    }
    if (st->rank == 0 && !(flat = malloc(total ? (size_t)total : 1))) {
        free(lens);
        free(offs);
        return pp_errf(e, "out of memory"); /* the others wait in MPI_Gatherv; MPI ends them */
    }
    rc = MPI_Gatherv(mine, len, MPI_BYTE, flat, lens, offs, MPI_BYTE, 0, MPI_COMM_WORLD);
    int out = rc == MPI_SUCCESS ? 0 : mpi_fail(e, "MPI_Gatherv", rc);
    for (int r = 0; out == 0 && st->rank == 0 && r < st->world; r++) {
        sizes[r] = (size_t)lens[r];
        if (!(all[r] = malloc(lens[r] ? (size_t)lens[r] : 1)))
            out = pp_errf(e, "out of memory");
        else
            memcpy(all[r], flat + offs[r], (size_t)lens[r]);
    }
    free(flat);
    free(lens);
    free(offs);
    return out;
}

static void mpi_close(pp_store *st)
{
    (void)st;
    int fin = 0;
    MPI_Finalized(&fin);
    if (!fin)
        MPI_Finalize();
}

static const pp_store_ops mpi_ops = {mpi_bcast, mpi_gather, mpi_close, NULL};

int pp_store_mpi_open(pp_store *st, pp_err *e)
{
    int init = 0, rank = 0, world = 0;
    MPI_Initialized(&init);
    if (!init && MPI_Init(NULL, NULL) != MPI_SUCCESS)
        return pp_errf(e, "rendezvous mpi: MPI_Init failed");
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    if (rank != st->rank || world != st->world)
        return pp_errf(e, "rendezvous mpi: MPI says rank %d of %d, the environment says %d of %d",
                       rank, world, st->rank, st->world);
    st->ops = &mpi_ops;
    return 0;
}
#else
int pp_store_mpi_open(pp_store *st, pp_err *e)
{
    (void)st;
    return pp_errf(e, "--rendezvous mpi: this build has no MPI (install an MPI, e.g. "
                      "libopenmpi-dev, and rebuild), or use tcp://HOST:PORT or file:DIR");
}
#endif
