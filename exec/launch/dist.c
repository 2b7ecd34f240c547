#include "dist.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* An integer environment variable: 1 set and valid, 0 unset, -1 bad. */
static int env_int(const char *name, int *out, pp_err *e)
{
    const char *v = getenv(name);
    if (!v || !*v)
        return 0;
    char *end;
    long x = strtol(v, &end, 10);
    if (*end || x < 0 || x > INT_MAX)
        return pp_errf(e, "environment: %s=\"%s\" is not a non-negative integer", name, v);
    *out = (int)x;
    return 1;
}

int pp_dist_env_detect(pp_dist_env *d, pp_err *e)
{
    static const char *const vars[][3] = {
        {"RANK", "WORLD_SIZE", "LOCAL_RANK"},
        {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"},
        {"PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"},
        {"SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"},
    };
    memset(d, 0, sizeof d[0]);
    d->world = 1;
    d->under_mpirun = getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE");
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        int rank = 0, world = 0, local = -1;
        int hr = env_int(vars[i][0], &rank, e), hw = env_int(vars[i][1], &world, e);
        if (hr < 0 || hw < 0 || env_int(vars[i][2], &local, e) < 0)
            return -1;
        if (!hr && !hw)
            continue;
        if (!hr || !hw)
            return pp_errf(e, "environment: %s is set without %s", hr ? vars[i][0] : vars[i][1],
                           hr ? vars[i][1] : vars[i][0]);
        if (world < 1 || rank >= world)
            return pp_errf(e, "environment: %s=%d is not a rank of %s=%d", vars[i][0], rank,
                           vars[i][1], world);
        d->rank = rank;
        d->world = world;
        d->local_rank = local >= 0 ? local : rank;
        snprintf(d->source, sizeof d->source, "%s/%s", vars[i][0], vars[i][1]);
        return 0;
    }
    return 0;
}

const char *pp_dist_rendezvous(const pp_dist_env *d, char *buf, size_t n, pp_err *e)
{
    const char *v = getenv("PPSCHED_RENDEZVOUS");
    const char *addr = getenv("MASTER_ADDR"), *port = getenv("MASTER_PORT");
    if (v && *v)
        snprintf(buf, n, "%s", v);
    else if (addr && *addr && port && *port)
        snprintf(buf, n, "tcp://%s:%s", addr, port);
#ifdef PPSCHED_HAVE_MPI
    else if (d->under_mpirun)
        snprintf(buf, n, "mpi");
#endif
    else {
        pp_errf(e, "rank %d of %d (from %s): give --rendezvous tcp://HOST:PORT (rank 0's host) "
                   "or file:DIR (a shared directory)%s, or set MASTER_ADDR and MASTER_PORT",
                d->rank, d->world, d->source,
#ifdef PPSCHED_HAVE_MPI
                " or mpi"
#else
                ""
#endif
        );
        return NULL;
    }
    return buf;
}

int pp_dist_gather_timeline(pp_store *st, pp_timeline *tl, const pp_dist_summary *mine,
                            pp_dist_summary *last, pp_err *e)
{
    int P = tl->info.stages, s = mine->stage;
    const pp_timed_list *l = &tl->stage[s];
    size_t bytes = sizeof *mine + l->count * sizeof *l->items;
    char *blob = malloc(bytes);
    if (!blob)
        return pp_errf(e, "out of memory");
    memcpy(blob, mine, sizeof *mine);
    if (l->count)
        memcpy(blob + sizeof *mine, l->items, l->count * sizeof *l->items);
    void **all;
    size_t *sizes;
    int rc = pp_store_gather(st, blob, bytes, &all, &sizes, e);
    free(blob);
    if (rc < 0)
        return -1;
    *last = *mine;
    for (int r = 0; all && r < pp_store_world(st) && rc == 0; r++) {
        pp_dist_summary sum;
        size_t n = (sizes[r] - sizeof sum) / sizeof(pp_timed_action);
        if (sizes[r] < sizeof sum || sizes[r] != sizeof sum + n * sizeof(pp_timed_action)) {
            rc = pp_errf(e, "rank %d sent a damaged timeline (%zu bytes)", r, sizes[r]);
            break;
        }
        memcpy(&sum, all[r], sizeof sum);
        if (sum.stage < 0 || sum.stage >= P) {
            rc = pp_errf(e, "rank %d reports stage %d of %d", r, sum.stage, P);
            break;
        }
        if (sum.stage == P - 1)
            *last = sum;
        if (sum.stage == s)
            continue; /* rank 0's own, already there */
        const pp_timed_action *a = (const pp_timed_action *)((char *)all[r] + sizeof sum);
        for (size_t i = 0; i < n && rc == 0; i++)
            if (pp_timeline_add_action(tl, sum.stage, &a[i]) < 0)
                rc = pp_errf(e, "out of memory");
    }
    pp_store_free_gathered(st, all, sizes);
    return rc;
}
