/* The rendezvous store's front: parses the spec, and builds allgather and
 * barrier from the implementation's broadcast and gather. */
#include "store.h"

#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <unistd.h>

#include "job.h"
#include "store_impl.h"

int pp_store_parse(const char *spec, pp_store_spec *out, pp_err *e)
{
    memset(out, 0, sizeof *out);
    if (strncmp(spec, "tcp://", 6) == 0) {
        const char *colon = strrchr(spec + 6, ':');
        char *end = NULL;
        long port = colon ? strtol(colon + 1, &end, 10) : -1;
        size_t hl = colon ? (size_t)(colon - (spec + 6)) : 0;
        if (!colon || !*(colon + 1) || *end || port < 1 || port > 65535 || hl == 0 ||
            hl >= sizeof out->host)
            return pp_errf(e, "--rendezvous \"%s\": expected tcp://HOST:PORT", spec);
        out->kind = PP_STORE_TCP;
        memcpy(out->host, spec + 6, hl);
        out->port = (int)port;
    } else if (strncmp(spec, "file:", 5) == 0 && spec[5]) {
        out->kind = PP_STORE_FILE;
        out->dir = spec + 5;
    } else if (strcmp(spec, "mpi") == 0) {
        out->kind = PP_STORE_MPI;
    } else {
        return pp_errf(e, "--rendezvous \"%s\": expected tcp://HOST:PORT, file:DIR or mpi", spec);
    }
    return 0;
}

/* file: and mpi: rank 0 makes the job's secret when none was given; their
 * channel is already private to the job. */
static int share_secret(pp_store *st, pp_err *e)
{
    unsigned char have = st->secret.len > 0, all_have = 1;
    unsigned char *every = malloc((size_t)st->world);
    int rc = every ? pp_store_allgather(st, &have, 1, every, e) : pp_errf(e, "out of memory");
    for (int r = 0; rc == 0 && r < st->world; r++)
        all_have &= every[r];
    free(every);
    if (rc < 0 || all_have)
        return rc;
    if (have) { /* some ranks were given one, others not: a launch mistake */
        st->refused = 1;
        return pp_errf(e, "some ranks have a job secret (PPSCHED_JOB_SECRET) and some not");
    }
    if (st->rank == 0 && pp_secret_generate(&st->secret, e) < 0)
        st->secret.len = 0; /* the others learn it from the broadcast */
    pp_secret s = st->secret;
    rc = pp_store_bcast(st, &s, sizeof s, e);
    if (rc == 0 && s.len == 0)
        rc = pp_errf(e, "rank 0 could not make a job secret");
    st->secret = s;
    return rc;
}

int pp_store_open(const char *spec, int rank, int world, const pp_store_opts *o,
                  pp_store **out, int *refused, pp_err *e)
{
    *refused = 0;
    if (world < 1 || rank < 0 || rank >= world)
        return pp_errf(e, "rendezvous: rank %d is not a rank of a world of %d", rank, world);
    pp_store_spec sp;
    if (world > 1 && pp_store_parse(spec, &sp, e) < 0) {
        *refused = 1;
        return -1;
    }
    if (world > 1 && sp.kind == PP_STORE_TCP && o->secret.len == 0) {
        *refused = 1;
        return pp_errf(e, "rendezvous %s: no job secret: give every rank the same "
                          "PPSCHED_JOB_SECRET (e.g. $(openssl rand -hex 16)) or "
                          "--job-secret-file", spec);
    }
    pp_store *st = calloc(1, sizeof *st);
    if (!st)
        return pp_errf(e, "out of memory");
    st->rank = rank;
    st->world = world;
    st->timeout_s = o->timeout_s > 0 ? o->timeout_s : 600;
    st->secret = o->secret;
    if (o->job)
        pp_job_digest(o->job, st->digest);
    snprintf(st->bind, sizeof st->bind, "%s", o->bind ? o->bind : "");
    int rc;
    if (world == 1) /* nobody to meet: every call is local (see below) */
        rc = 0;
    else if (sp.kind == PP_STORE_TCP)
        rc = pp_store_tcp_open(st, sp.host, sp.port, e);
    else if (sp.kind == PP_STORE_FILE)
        rc = pp_store_file_open(st, sp.dir, e);
    else
        rc = pp_store_mpi_open(st, e);
    if (rc < 0) {
        *refused = st->refused;
        free(st);
        return -1;
    }
    int differ = 0;
    if (world > 1 &&
        (share_secret(st, e) < 0 || (o->job && pp_job_agree(st, o->job, &differ, e) < 0))) {
        *refused = st->refused || differ;
        pp_store_close(st);
        return -1;
    }
    *out = st;
    return 0;
}

void pp_store_close(pp_store *st)
{
    if (!st)
        return;
    if (st->ops)
        st->ops->close(st);
    free(st);
}

int pp_store_bcast(pp_store *st, void *buf, size_t n, pp_err *e)
{
    return st->world == 1 ? 0 : st->ops->bcast(st, buf, n, e);
}

int pp_store_gather(pp_store *st, const void *mine, size_t n, void ***all, size_t **sizes,
                    pp_err *e)
{
    *all = NULL;
    *sizes = NULL;
    if (st->rank == 0) {
        *all = calloc((size_t)st->world, sizeof **all);
        *sizes = calloc((size_t)st->world, sizeof **sizes);
        if (!*all || !*sizes) {
            free(*all);
            free(*sizes);
            *all = NULL;
            *sizes = NULL;
            return pp_errf(e, "out of memory");
        }
    }
    int rc;
    if (st->world == 1) {
        (*all)[0] = malloc(n ? n : 1);
        rc = (*all)[0] ? 0 : pp_errf(e, "out of memory");
        if (rc == 0) {
            memcpy((*all)[0], mine, n);
            (*sizes)[0] = n;
        }
    } else {
        rc = st->ops->gather(st, mine, n, st->rank == 0 ? *all : NULL,
                             st->rank == 0 ? *sizes : NULL, e);
    }
    if (rc < 0) {
        pp_store_free_gathered(st, *all, *sizes);
        *all = NULL;
        *sizes = NULL;
    }
    return rc;
}

void pp_store_free_gathered(pp_store *st, void **all, size_t *sizes)
{
    for (int r = 0; all && r < st->world; r++)
        free(all[r]);
    free(all);
    free(sizes);
}

int pp_store_allgather(pp_store *st, const void *mine, size_t n, void *all, pp_err *e)
{
    void **parts;
    size_t *sizes;
    if (pp_store_gather(st, mine, n, &parts, &sizes, e) < 0)
        return -1;
    int rc = 0;
    for (int r = 0; parts && r < st->world; r++) {
        if (sizes[r] != n) {
            rc = pp_errf(e, "rendezvous: rank %d sent %zu bytes, expected %zu", r, sizes[r], n);
            break;
        }
        memcpy((char *)all + (size_t)r * n, parts[r], n);
    }
    pp_store_free_gathered(st, parts, sizes);
    /* rank 0's verdict travels with the data: one byte ahead of it */
    unsigned char *msg = malloc((size_t)st->world * n + 1);
    if (!msg)
        return pp_errf(e, "out of memory");
    if (st->rank == 0) {
        msg[0] = rc == 0;
        memcpy(msg + 1, all, (size_t)st->world * n);
    }
    int brc = pp_store_bcast(st, msg, (size_t)st->world * n + 1, e);
    if (brc == 0 && st->rank != 0) {
        if (!msg[0])
            brc = pp_errf(e, "rendezvous: the ranks disagree on a message size");
        memcpy(all, msg + 1, (size_t)st->world * n);
    }
    free(msg);
    return rc < 0 ? rc : brc;
}

int pp_store_barrier(pp_store *st, pp_err *e)
{
    unsigned char one = 1;
    unsigned char *all = malloc((size_t)st->world);
    if (!all)
        return pp_errf(e, "out of memory");
    int rc = pp_store_allgather(st, &one, 1, all, e);
    free(all);
    return rc;
}

void pp_store_local_host(pp_store *st, char *buf, size_t n)
{
    const char *env = getenv("PPSCHED_HOST");
    if (env && *env)
        snprintf(buf, n, "%s", env);
    else if (st->ops && st->ops->local_addr && st->ops->local_addr(st, buf, n) == 0)
        return;
    else if (gethostname(buf, n - 1) < 0)
        snprintf(buf, n, "localhost");
    buf[n - 1] = 0;
}

const pp_secret *pp_store_secret(const pp_store *st)
{
    return &st->secret;
}

const unsigned char *pp_store_digest(const pp_store *st)
{
    return st->digest;
}

const char *pp_store_bind(const pp_store *st)
{
    return st->bind[0] ? st->bind : NULL;
}

const char *pp_store_strangers(const pp_store *st)
{
    return st->strangers;
}

int pp_store_rank(const pp_store *st)
{
    return st->rank;
}

int pp_store_world(const pp_store *st)
{
    return st->world;
}
