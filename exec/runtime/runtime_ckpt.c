/* A stage's state at a checkpoint cut, as one blob: position, update
 * count, every live weight version, optimizer state, gradient buffer, the
 * micro-batches in flight (activations, forward version, loss), and the
 * outbox messages its neighbours will need. Native byte order: checkpoints
 * resume on the same kind of machine. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "runtime_private.h"

#define STATE_MAGIC 0x50505354 /* "PPST" */

typedef struct {
    unsigned char *p;
    size_t n, cap;
    int oom;
} blob;

static void put(blob *b, const void *src, size_t n)
{
    if (b->oom)
        return;
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n)
            cap *= 2;
        unsigned char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}

static void put_i64(blob *b, int64_t v)
{
    put(b, &v, sizeof v);
}

/* Device buffer -> blob. */
static void put_dev(blob *b, stage_rt *s, const void *dev, size_t bytes)
{
    void *host = malloc(bytes ? bytes : 1);
    if (!host) {
        b->oom = 1;
        return;
    }
    s->r->cfg->backend->to_host(s->bk, host, dev, bytes);
    put(b, host, bytes);
    free(host);
}

int pp_stage_save(stage_rt *s, int j, void **out, size_t *bytes, pp_err *e)
{
    const pp_backend_ops *bk = s->r->cfg->backend;
    const pp_cut *cut = &s->r->cfg->cuts[j];
    blob b = {0};
    int ninflight = (int)s->flying.n, nout = 0;
    int32_t *mbs = pp_mbt_keys(&s->flying); /* in micro-batch order */
    if (!mbs)
        return pp_errf(e, "out of memory for the checkpoint of stage %d", s->s);
    for (int i = 0; i < s->noutbox; i++)
        nout += s->outbox[i].cut == j;
    int64_t head[] = {STATE_MAGIC, s->s, (int64_t)cut->pos[s->s], s->updates, s->ws.current,
                      s->ws.pinned, s->ws.n, ninflight, nout, s->loss_n};
    for (size_t i = 0; i < sizeof head / sizeof head[0]; i++)
        put_i64(&b, head[i]);
    put(&b, &s->loss_sum, sizeof s->loss_sum);
    for (int i = 0; i < s->ws.n; i++) {
        put_i64(&b, s->ws.v[i].version);
        put_dev(&b, s, s->ws.v[i].buf, s->ws.bytes);
    }
    size_t ob = bk->opt_state_bytes(s->bk);
    void *opt = malloc(ob ? ob : 1);
    if (!opt)
        b.oom = 1;
    else {
        bk->opt_state_get(s->bk, opt);
        put(&b, opt, ob);
        free(opt);
    }
    put_dev(&b, s, s->grad, s->ws.bytes);
    size_t ab = bk->acts_bytes(s->bk);
    for (int i = 0; i < ninflight; i++) {
        const flying_mb *f = pp_flying(s, mbs[i]);
        put_i64(&b, mbs[i]);
        put_i64(&b, f->v_f);
        put(&b, &f->loss, sizeof f->loss);
        put_dev(&b, s, f->acts, ab);
    }
    free(mbs);
    for (int i = 0; i < s->noutbox; i++) {
        pp_outbox_msg *m = &s->outbox[i];
        if (m->cut != j)
            continue;
        put_i64(&b, m->kind);
        put_i64(&b, m->dst);
        put_i64(&b, m->mb);
        put_i64(&b, (int64_t)m->bytes);
        put(&b, m->buf, m->bytes);
    }
    if (b.oom) {
        free(b.p);
        return pp_errf(e, "out of memory for the checkpoint of stage %d", s->s);
    }
    *out = b.p;
    *bytes = b.n;
    return 0;
}

typedef struct {
    const unsigned char *p;
    size_t n, at;
    int bad;
} reader;

static void get(reader *r, void *dst, size_t n)
{
    if (r->bad || r->at + n > r->n) {
        r->bad = 1;
        memset(dst, 0, n);
        return;
    }
    memcpy(dst, r->p + r->at, n);
    r->at += n;
}

static int64_t get_i64(reader *r)
{
    int64_t v;
    get(r, &v, sizeof v);
    return v;
}

/* Blob -> a fresh device buffer. */
static void *get_dev(reader *r, stage_rt *s, size_t bytes)
{
    const pp_backend_ops *bk = s->r->cfg->backend;
    if (r->bad || r->at + bytes > r->n) {
        r->bad = 1;
        return NULL;
    }
    void *dev = bk->alloc(s->bk, bytes);
    if (dev)
        bk->from_host(s->bk, dev, r->p + r->at, bytes);
    r->at += bytes;
    return dev;
}

static int restore_versions(stage_rt *s, reader *r, int nversions, int current, int pinned,
                            pp_err *e)
{
    pp_weights_reset(&s->ws, current, pinned);
    for (int i = 0; i < nversions; i++) {
        int64_t v64 = get_i64(r);
        int v = (int)v64;
        if (v64 < 0 || v64 > current || pp_weights_get(&s->ws, v))
            return pp_errf(e, "stage %d: checkpoint holds weight version %lld (current %d) "
                              "or holds it twice", s->s, (long long)v64, current);
        void *buf = get_dev(r, s, s->ws.bytes);
        if (!buf)
            return pp_errf(e, "stage %d: checkpoint truncated or out of memory", s->s);
        if (pp_weights_adopt(&s->ws, v, buf, (v == current) + (v == pinned)) < 0)
            return pp_errf(e, "out of memory");
    }
    return 0;
}

/* Moves the stage's cursor past the first `pos` actions (pos at most its
 * count), returning the OPTs among them: the updates (and the current
 * weight version) a stage has made when it resumes at pos. */
static int64_t skip_to(stage_rt *s, size_t pos)
{
    int64_t opts = 0;
    pp_action a;
    /* several stages per rank: the rank's thread skips the stage's first
     * pos actions as it meets them (resume_skip); counted here on the
     * stage's own list */
    pp_stream *ir = s->r->stage_view ? s->r->stage_view : s->r->ir;
    if (s->r->stage_view)
        s->resume_skip = pos;
    for (; s->pos < pos && pp_stream_next(ir, s->s, &a); s->pos++)
        opts += a.op == PP_OP_OPT;
    return opts;
}

/* The header of a stage's state, checked against the schedule it resumes
 * (and the stage's cursor moved to its position): a checkpoint with valid
 * CRCs may still hold numbers that would index out of range or contradict
 * the IR (a crafted or foreign file). */
static int check_head(stage_rt *s, const int64_t *h, pp_err *e)
{
    size_t count = s->r->plan.actions[s->s];
    int64_t N = s->r->N;
    if (h[2] < 0 || (uint64_t)h[2] > count)
        return pp_errf(e, "stage %d: checkpoint resumes at action %lld of %zu", s->s,
                       (long long)h[2], count);
    int64_t updates = skip_to(s, (size_t)h[2]);
    if (h[3] != updates || h[4] != updates)
        return pp_errf(e, "stage %d: checkpoint says %lld updates and weight version %lld; its "
                          "schedule position has %lld", s->s, (long long)h[3], (long long)h[4],
                       (long long)updates);
    if (h[5] < -1 || h[5] > h[4])
        return pp_errf(e, "stage %d: checkpoint pins weight version %lld", s->s, (long long)h[5]);
    if (h[6] < 1 || h[6] > h[4] + 1 || h[6] > 4096)
        return pp_errf(e, "stage %d: checkpoint holds %lld weight versions", s->s, (long long)h[6]);
    if (h[7] < 0 || h[7] > N || h[8] < 0 || h[8] > 2 * N || h[9] < 0 || h[9] > N)
        return pp_errf(e, "stage %d: checkpoint counts out of range (%lld in flight, %lld "
                          "messages, %lld losses)", s->s, (long long)h[7], (long long)h[8],
                       (long long)h[9]);
    return 0;
}

/* AdamW's step count t, at the end of the optimizer state (backend.h)
 * whatever the optimizer (Muon's AdamW part and the delay correction's
 * buffer come before it, and the size is the stage's own optimizer's):
 * every update of the stage took one step, so t equals its update count.
 * Any other value (negative, fractional, larger than the schedule allows,
 * inf, nan) is refused before the backend casts it to an integer or its
 * bias correction 1 - beta^t turns it into inf or nan. */
static int check_adamw_steps(const stage_rt *s, const unsigned char *opt, size_t bytes,
                             pp_err *e)
{
    double t;
    if (bytes < sizeof t)
        return pp_errf(e, "stage %d: checkpoint's optimizer state is %zu bytes", s->s, bytes);
    memcpy(&t, opt + bytes - sizeof t, sizeof t);
    if (!(t == (double)s->updates))
        return pp_errf(e, "stage %d: checkpoint's AdamW step count t is %g, the stage has made "
                          "%d updates", s->s, t, s->updates);
    return 0;
}

/* A kept message must be one this stage sends: an activation to s+1 or a
 * gradient to s-1, of a real micro-batch, of the boundary's size. */
static int check_message(const stage_rt *s, const pp_outbox_msg *m, size_t boundary, pp_err *e)
{
    int ok = (m->kind == PP_MSG_ACT && m->dst == s->s + 1 && m->dst < s->r->P) ||
             (m->kind == PP_MSG_GRAD && m->dst == s->s - 1 && m->dst >= 0);
    if (!ok || m->mb < 0 || m->mb >= s->r->N || m->bytes != boundary)
        return pp_errf(e, "stage %d: checkpoint keeps a message this stage cannot send (kind "
                          "%d to stage %d, micro-batch %d, %zu bytes)", s->s, m->kind, m->dst,
                       m->mb, m->bytes);
    return 0;
}

int pp_stage_restore(stage_rt *s, const void *data, size_t bytes, pp_err *e)
{
    const pp_backend_ops *bk = s->r->cfg->backend;
    reader r = {data, bytes, 0, 0};
    int64_t head[10];
    for (int i = 0; i < 10; i++)
        head[i] = get_i64(&r);
    if (r.bad || head[0] != STATE_MAGIC || head[1] != s->s)
        return pp_errf(e, "checkpoint state of stage %d is damaged", s->s);
    if (check_head(s, head, e) < 0)
        return -1;
    s->updates = (int)head[3];
    int nversions = (int)head[6], ninflight = (int)head[7], nout = (int)head[8];
    s->loss_n = (int)head[9];
    get(&r, &s->loss_sum, sizeof s->loss_sum);
    if (restore_versions(s, &r, nversions, (int)head[4], (int)head[5], e) < 0)
        return -1;
    size_t ob = bk->opt_state_bytes(s->bk);
    if (r.at + ob > r.n)
        return pp_errf(e, "stage %d: checkpoint truncated", s->s);
    if (check_adamw_steps(s, r.p + r.at, ob, e) < 0)
        return -1;
    bk->opt_state_put(s->bk, r.p + r.at);
    r.at += ob;
    if (r.at + s->ws.bytes > r.n)
        return pp_errf(e, "stage %d: checkpoint truncated", s->s);
    bk->from_host(s->bk, s->grad, r.p + r.at, s->ws.bytes);
    r.at += s->ws.bytes;
    size_t ab = bk->acts_bytes(s->bk);
    pp_stream *ir = s->r->ir;
    for (int i = 0; i < ninflight; i++) {
        int64_t mb = get_i64(&r), vf = get_i64(&r);
        if (r.bad || mb < 0 || mb >= s->r->N || pp_flying(s, (int)mb))
            return pp_errf(e, "stage %d: checkpoint names a bad micro-batch or one twice", s->s);
        if (vf < 0 || vf > head[4])
            return pp_errf(e, "stage %d: checkpoint's micro-batch %lld read weight version %lld",
                           s->s, (long long)mb, (long long)vf);
        int dup;
        flying_mb *f = pp_mbt_add(&s->flying, (int)mb, &dup);
        if (!f)
            return pp_errf(e, "out of memory");
        f->v_f = (int)vf;
        f->stash = ir->stashes && ir->stashes(ir, s->s, (int)mb);
        get(&r, &f->loss, sizeof f->loss);
        if (!(f->acts = get_dev(&r, s, ab))) {
            pp_mbt_remove(&s->flying, (int)mb, NULL);
            return pp_errf(e, "stage %d: checkpoint truncated or out of memory", s->s);
        }
        if (f->stash && pp_weights_ref(&s->ws, (int)vf, 1) < 0)
            return pp_errf(e, "stage %d: stashed version %lld missing from the checkpoint", s->s,
                           (long long)vf);
    }
    size_t boundary = bk->boundary_floats(s->bk) * sizeof(float);
    for (int i = 0; i < nout; i++) {
        pp_outbox_msg m = {0};
        m.kind = (int)get_i64(&r);
        m.dst = (int)get_i64(&r);
        m.mb = (int)get_i64(&r);
        m.bytes = (size_t)get_i64(&r);
        if (r.bad || m.bytes > r.n - r.at)
            return pp_errf(e, "stage %d: checkpoint truncated", s->s);
        if (check_message(s, &m, boundary, e) < 0)
            return -1;
        m.buf = malloc(m.bytes ? m.bytes : 1);
        if (!m.buf)
            return pp_errf(e, "out of memory");
        get(&r, m.buf, m.bytes);
        m.cut = -1; /* owed on resume */
        pp_outbox_msg *x = realloc(s->outbox, (size_t)(s->noutbox + 1) * sizeof *x);
        if (!x) {
            free(m.buf);
            return pp_errf(e, "out of memory");
        }
        s->outbox = x;
        s->outbox[s->noutbox++] = m;
    }
    if (r.bad || r.at != r.n)
        return pp_errf(e, "checkpoint state of stage %d has the wrong size", s->s);
    if (!pp_weights_get(&s->ws, s->ws.current))
        return pp_errf(e, "stage %d: checkpoint lacks the current weight version %d", s->s,
                       s->ws.current);
    return 0;
}

int pp_stage_resend(stage_rt *s, pp_err *e)
{
    const pp_backend_ops *bk = s->r->cfg->backend;
    for (int i = 0; i < s->noutbox; i++) {
        pp_outbox_msg *m = &s->outbox[i];
        if (m->cut != -1)
            continue;
        void *dev = bk->alloc(s->bk, m->bytes);
        if (!dev)
            return pp_errf(e, "out of memory");
        bk->from_host(s->bk, dev, m->buf, m->bytes);
        int rc = s->r->tr->send(s->r->tr, s->s, m->dst, m->kind, m->mb, dev, m->bytes, e);
        bk->release(s->bk, dev);
        if (rc < 0)
            return -1;
        free(m->buf);
        *m = s->outbox[--s->noutbox];
        i--;
    }
    return 0;
}

/* A message this stage just sent that a checkpoint cut will need. */
int pp_stage_keep_for_checkpoint(stage_rt *s, const pp_action *a, size_t idx, pp_err *e)
{
    const pp_run_config *c = s->r->cfg;
    for (int j = 0; j < c->ncuts; j++) {
        if (!c->cuts[j].keep[s->s][idx] || idx >= c->cuts[j].pos[s->s])
            continue;
        int grad = a->op != PP_OP_F;
        size_t bytes = c->backend->boundary_floats(s->bk) * sizeof(float);
        pp_outbox_msg m = {j, grad ? PP_MSG_GRAD : PP_MSG_ACT, grad ? s->s - 1 : s->s + 1, a->mb,
                           malloc(bytes), bytes};
        pp_outbox_msg *x = realloc(s->outbox, (size_t)(s->noutbox + 1) * sizeof *x);
        if (!m.buf || !x) {
            free(m.buf);
            if (x)
                s->outbox = x;
            return pp_errf(e, "out of memory");
        }
        s->outbox = x;
        c->backend->to_host(s->bk, m.buf, grad ? s->dx_in : s->x_out, bytes);
        s->outbox[s->noutbox++] = m;
    }
    return 0;
}

/* After the stage's K-th OPT: serialise its state for cut j. */
int pp_stage_reach_cut(stage_rt *s, int j, pp_err *e)
{
    run *r = s->r;
    void *b;
    size_t n;
    if (pp_stage_save(s, j, &b, &n, e) < 0)
        return -1;
    for (int i = 0; i < s->noutbox; i++) /* saved: no longer needed */
        if (s->outbox[i].cut == j) {
            free(s->outbox[i].buf);
            s->outbox[i--] = s->outbox[--s->noutbox];
        }
    pthread_mutex_lock(&r->mu);
    r->cut_blobs[j][s->s] = b;
    r->cut_sizes[j][s->s] = n;
    r->cut_have[j]++;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    return 0;
}
