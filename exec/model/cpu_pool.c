/* The fork-join team of cpu_pool.h. Workers wait for a new job generation,
 * first spinning briefly (a stage runs many short loops per micro-batch,
 * and a futex wake-up costs about as much as a small loop), then on a
 * condition variable; the caller runs part 0 and waits the same way for
 * the others. */
#define _GNU_SOURCE
#include "cpu_pool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#define SPIN_ROUNDS 4000

struct pp_pool {
    int threads;
    pthread_t *workers;
    struct worker *args;
    pthread_mutex_t mu;
    pthread_cond_t go, done;
    atomic_uint gen;     /* incremented for every job (and for stop) */
    atomic_int pending;  /* worker parts of the current job not finished */
    int stop;            /* set under mu with a new generation */
    /* the current job, written before its generation is published */
    pp_pool_fn fn;
    void *ctx;
    int n;
};

struct worker {
    pp_pool *p;
    int part;
};

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void run_part(pp_pool *p, int t)
{
    int T = p->threads;
    int lo = (int)((long long)p->n * t / T), hi = (int)((long long)p->n * (t + 1) / T);
    if (lo < hi)
        p->fn(p->ctx, lo, hi, t);
}

/* Waits until the generation differs from `seen`; returns the new one. */
static unsigned wait_job(pp_pool *p, unsigned seen)
{
    unsigned g;
    for (int i = 0; i < SPIN_ROUNDS; i++) {
        if ((g = atomic_load_explicit(&p->gen, memory_order_acquire)) != seen)
            return g;
        cpu_relax();
    }
    pthread_mutex_lock(&p->mu);
    while ((g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen)
        pthread_cond_wait(&p->go, &p->mu);
    pthread_mutex_unlock(&p->mu);
    return g;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    pp_pool *p = w->p;
    unsigned seen = 0;
    for (;;) {
        seen = wait_job(p, seen);
        pthread_mutex_lock(&p->mu);
        int stop = p->stop;
        pthread_mutex_unlock(&p->mu);
        if (stop)
            return NULL;
        run_part(p, w->part);
        if (atomic_fetch_sub_explicit(&p->pending, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->mu);
        }
    }
}

/* Publishes the job (or stop) to the workers. */
static void publish(pp_pool *p)
{
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
}

int pp_pool_create(int threads, pp_pool **out, pp_err *e)
{
    if (threads < 1)
        return pp_errf(e, "a thread team needs at least 1 thread, not %d", threads);
    pp_pool *p = calloc(1, sizeof *p);
    if (!p)
        return pp_errf(e, "out of memory");
    p->threads = threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->go, NULL);
    pthread_cond_init(&p->done, NULL);
    atomic_init(&p->gen, 0);
    atomic_init(&p->pending, 0);
    p->workers = calloc((size_t)threads, sizeof *p->workers);
    p->args = calloc((size_t)threads, sizeof *p->args);
    if (!p->workers || !p->args) {
        pp_pool_free(p);
        return pp_errf(e, "out of memory");
    }
    for (int t = 1; t < threads; t++) {
        p->args[t] = (struct worker){p, t};
        if (pthread_create(&p->workers[t], NULL, worker_main, &p->args[t]) != 0) {
            p->threads = t; /* the workers started so far */
            pp_pool_free(p);
            return pp_errf(e, "cannot start CPU worker thread %d of %d", t, threads);
        }
    }
    *out = p;
    return 0;
}

void pp_pool_free(pp_pool *p)
{
    if (!p)
        return;
    if (p->workers) {
        pthread_mutex_lock(&p->mu);
        p->stop = 1;
        pthread_mutex_unlock(&p->mu);
        publish(p);
        for (int t = 1; t < p->threads; t++)
            pthread_join(p->workers[t], NULL);
    }
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->go);
    pthread_cond_destroy(&p->done);
    free(p->workers);
    free(p->args);
    free(p);
}

int pp_pool_threads(const pp_pool *p)
{
    return p ? p->threads : 1;
}

void pp_pool_run(pp_pool *p, int n, pp_pool_fn fn, void *ctx)
{
    if (!p || p->threads == 1 || n < 2) {
        if (n > 0)
            fn(ctx, 0, n, 0);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    p->n = n;
    atomic_store_explicit(&p->pending, p->threads - 1, memory_order_relaxed);
    publish(p);
    run_part(p, 0);
    for (int i = 0; i < SPIN_ROUNDS; i++) {
        if (atomic_load_explicit(&p->pending, memory_order_acquire) == 0)
            return;
        cpu_relax();
    }
    pthread_mutex_lock(&p->mu);
    while (atomic_load_explicit(&p->pending, memory_order_acquire) > 0)
        pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

int pp_cpu_cores(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
        return CPU_COUNT(&set);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}
