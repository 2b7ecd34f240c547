/* cuDNN's fused flash attention for a stage (cuda_attention.cu picks it):
 * causal softmax(Q K^T / sqrt(hs)) V on bf16 operands with fp32
 * accumulation and statistics, without a B H T^2 score tensor.
 *
 * cuDNN's backend graph API recognises flash attention as a pattern of
 * matmul, pointwise and reduction operations: the graph that
 * cudnn-frontend's SDPA nodes emit (its "composite" form, which every 9.x
 * release runs). The two graphs below are that pattern for our case: one
 * head size, causal, no dropout, bias or padding.
 *   forward   S = mask(Q K^T * scale), M = rowmax S, E = exp(S - M),
 *             Z = rowsum E, stats = M + log Z, O = bf16(E / Z) V
 *   backward  D = rowsum(dO * O), P = exp(mask(Q K^T * scale) - stats),
 *             dV = P^T dO, dS = (dO V^T - D) * P * scale, dK = dS^T Q,
 *             dQ = dS K in fp32, then bf16
 * mask() puts -inf where the key comes after the query. Both graphs are
 * built once per stage (its shapes are fixed): heuristics choose the engine
 * config, its plan is finalized and the workspace sized; a call only
 * builds a variant pack (pointers) and executes on the stage's stream,
 * through a handle of the stage's own.
 *
 * Layouts: qkv [B][T][3C] is packed, so Q, K and V are strided views of
 * one bf16 copy (dims [B][H][T][hs], strides [3TC, hs, 3C, 1]); the graphs
 * take K (and, backward, V) transposed, dims [B][H][hs][T], by swapping the
 * last two strides. O and dO are [B][T][C]; dQ, dK and dV land packed like
 * qkv. The bf16 copies are the stage's scratch, converted again from qkv
 * and atty for the backward (exactly the forward's: bf16 -> fp32 -> bf16
 * is the identity), so that a micro-batch keeps only its stats. */
#include <cudnn.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <new>
#include <string>
#include <vector>

#include "cuda_stage.cuh"
#include "kernels.cuh"

namespace pp_cuda {

typedef cudnnBackendDescriptor_t desc_t;

/* A graph's finalized plan and every descriptor behind it (destroyed
 * together, newest first). */
struct sdpa_plan {
    std::vector<desc_t> owned;
    desc_t plan = nullptr;
    int64_t ws = 0;
};

struct cudnn_attention {
    cudnnHandle_t h = nullptr;
    sdpa_plan fwd, bwd;
    /* the graphs' scalars, passed by value: host memory read at execution */
    float scale = 0.0f, neg_inf = 0.0f, one = 1.0f;
    /* stage scratch, one allocation (MK_WS): bf16 qkv, O, dO and dqkv, the
     * backward's fp32 row sums D and dQ accumulator, the plans' workspace */
    void *scratch = nullptr;
    __nv_bfloat16 *qkv, *o, *dout, *dqkv;
    float *dsum, *dq_acc;
    void *ws;
    bool zero_dq_acc; /* cuDNN before 9.6 wants the accumulator zeroed */
};

namespace {

/* The variant packs' tensor ids; virtual tensors count up from kVirtual. */
enum : int64_t {
    T_Q = 1, T_K, T_V, T_O, T_STATS, T_DO, T_DQ, T_DK, T_DV, T_DQ_ACC, T_DSUM,
    T_SCALE, T_NEG_INF, T_ONE, kVirtual = 100
};

const cudnnDataType_t F32 = CUDNN_DATA_FLOAT, BF16 = CUDNN_DATA_BFLOAT16;

struct dims4 {
    int64_t d[4], s[4];
};

/* The shapes of both graphs; D = hs. */
struct shapes {
    dims4 qkv, qkv_t, out, scores, scores_t, rows, dq_acc, d_out_o, scalar;
    explicit shapes(const cuda_stage *c)
    {
        int64_t B = c->B, H = c->H, T = c->T, C = c->C, D = c->C / c->H;
        qkv = {{B, H, T, D}, {3 * T * C, D, 3 * C, 1}};
        qkv_t = {{B, H, D, T}, {3 * T * C, D, 1, 3 * C}};
        out = {{B, H, T, D}, {T * C, D, C, 1}};
        scores = {{B, H, T, T}, {H * T * T, T * T, T, 1}};
        scores_t = {{B, H, T, T}, {H * T * T, T * T, 1, T}};
        rows = {{B, H, T, 1}, {H * T, T, 1, 1}};
        dq_acc = {{B, H, T, D}, {H * T * D, T * D, D, 1}};
        d_out_o = {{B, H, T, D}, {H * T * D, T * D, H * D, 1}}; /* (virtual) */
        scalar = {{1, 1, 1, 1}, {1, 1, 1, 1}};
    }
};

/* "call: CUDNN_STATUS_...: cuDNN's last message". */
std::string cudnn_note(const char *call, cudnnStatus_t st)
{
    char last[256] = "";
    cudnnGetLastErrorString(last, sizeof last);
    std::string s = std::string(call) + ": " + cudnnGetErrorString(st);
    if (last[0])
        s += std::string(": ") + last;
    return s;
}

/* Creates descriptors into an owned list; the first failure sticks (note)
 * and later calls do nothing. */
struct builder {
    cudnnHandle_t h;
    std::vector<desc_t> &owned;
    std::vector<desc_t> ops;
    int64_t next_uid = kVirtual;
    std::string note;

    builder(cudnnHandle_t handle, std::vector<desc_t> &into) : h(handle), owned(into) {}

    bool ok() const { return note.empty(); }
    void check(cudnnStatus_t st, const char *call)
    {
        if (st != CUDNN_STATUS_SUCCESS && ok())
            note = cudnn_note(call, st);
    }
    desc_t make(cudnnBackendDescriptorType_t type)
    {
        desc_t d = nullptr;
        if (!ok())
            return nullptr;
        check(cudnnBackendCreateDescriptor(type, &d), "cudnnBackendCreateDescriptor");
        if (ok())
            owned.push_back(d);
        return ok() ? d : nullptr;
    }
    void set(desc_t d, cudnnBackendAttributeName_t a, cudnnBackendAttributeType_t t, int64_t n,
             const void *v)
    {
        if (ok())
            check(cudnnBackendSetAttribute(d, a, t, n, v), "cudnnBackendSetAttribute");
    }
    void set_desc(desc_t d, cudnnBackendAttributeName_t a, desc_t v)
    {
        set(d, a, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &v);
    }
    void finalize(desc_t d, const char *what)
    {
        if (ok())
            check(cudnnBackendFinalize(d), what);
    }

    desc_t tensor(int64_t uid, cudnnDataType_t dt, const dims4 &x, bool is_virtual = false,
                  bool by_value = false)
    {
        desc_t d = make(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
        int64_t align = 16;
        set(d, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dt);
        set(d, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, x.d);
        set(d, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, x.s);
        set(d, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid);
        set(d, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align);
        if (is_virtual)
            set(d, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &is_virtual);
        if (by_value)
            set(d, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &by_value);
        finalize(d, "finalize tensor");
        return d;
    }
    desc_t virt(cudnnDataType_t dt, const dims4 &x) { return tensor(next_uid++, dt, x, true); }

    /* y = mode(x, b, t) in prec (b, t: 0 when the mode takes fewer). */
    void pointwise_to(desc_t y, cudnnPointwiseMode_t mode, desc_t x, desc_t b = nullptr,
                      desc_t t = nullptr, cudnnDataType_t prec = F32, int64_t axis = -1)
    {
        desc_t pw = make(CUDNN_BACKEND_POINTWISE_DESCRIPTOR);
        set(pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode);
        set(pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &prec);
        if (mode == CUDNN_POINTWISE_GEN_INDEX)
            set(pw, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis);
        finalize(pw, "finalize pointwise descriptor");
        desc_t op = make(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR);
        float alpha = 1.0f;
        set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, pw);
        set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, x);
        if (b)
            set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, b);
        if (t)
            set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, t);
        set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, y);
        set(op, CUDNN_ATTR_OPERATION_POINTWISE_ALPHA1, CUDNN_TYPE_FLOAT, 1, &alpha);
        set(op, CUDNN_ATTR_OPERATION_POINTWISE_ALPHA2, CUDNN_TYPE_FLOAT, 1, &alpha);
        finalize(op, "finalize pointwise operation");
        if (ok())
            ops.push_back(op);
    }
    /* The same into a new virtual tensor of shape x and type out. */
    desc_t pointwise(const dims4 &sh, cudnnPointwiseMode_t mode, desc_t x, desc_t b = nullptr,
                     desc_t t = nullptr, cudnnDataType_t out = F32)
    {
        desc_t y = virt(out, sh);
        pointwise_to(y, mode, x, b, t);
        return y;
    }
    /* y = x reduced (op) to y's shape, in fp32. */
    void reduction(desc_t y, cudnnReduceTensorOp_t how, desc_t x)
    {
        desc_t r = make(CUDNN_BACKEND_REDUCTION_DESCRIPTOR);
        cudnnDataType_t f = F32;
        set(r, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &f);
        set(r, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &how);
        finalize(r, "finalize reduction descriptor");
        desc_t op = make(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR);
        set_desc(op, CUDNN_ATTR_OPERATION_REDUCTION_DESC, r);
        set_desc(op, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, x);
        set_desc(op, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, y);
        finalize(op, "finalize reduction operation");
        if (ok())
            ops.push_back(op);
    }
    /* c = a b over the last two dimensions, fp32 accumulation. */
    void matmul(desc_t c, desc_t a, desc_t b)
    {
        desc_t m = make(CUDNN_BACKEND_MATMUL_DESCRIPTOR);
        cudnnDataType_t f = F32;
        set(m, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &f);
        finalize(m, "finalize matmul descriptor");
        desc_t op = make(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR);
        set_desc(op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, a);
        set_desc(op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, b);
        set_desc(op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, c);
        set_desc(op, CUDNN_ATTR_OPERATION_MATMUL_DESC, m);
        finalize(op, "finalize matmul operation");
        if (ok())
            ops.push_back(op);
    }
    /* y = x seen with y's dims and strides (a transpose, a type change). */
    void reshape(desc_t y, desc_t x)
    {
        desc_t op = make(CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR);
        set_desc(op, CUDNN_ATTR_OPERATION_RESHAPE_XDESC, x);
        set_desc(op, CUDNN_ATTR_OPERATION_RESHAPE_YDESC, y);
        finalize(op, "finalize reshape operation");
        if (ok())
            ops.push_back(op);
    }
    /* s with neg_inf where the key (column) comes after the query (row). */
    desc_t causal(const dims4 &sh, desc_t s, desc_t neg_inf)
    {
        desc_t row = virt(CUDNN_DATA_INT32, sh), col = virt(CUDNN_DATA_INT32, sh);
        pointwise_to(row, CUDNN_POINTWISE_GEN_INDEX, s, nullptr, nullptr, F32, 2);
        pointwise_to(col, CUDNN_POINTWISE_GEN_INDEX, s, nullptr, nullptr, F32, 3);
        desc_t keep = virt(CUDNN_DATA_BOOLEAN, sh);
        pointwise_to(keep, CUDNN_POINTWISE_CMP_GE, row, col, nullptr, CUDNN_DATA_BOOLEAN);
        return pointwise(sh, CUDNN_POINTWISE_BINARY_SELECT, s, neg_inf, keep);
    }
};

void forward_graph(builder &b, const shapes &x)
{
    desc_t q = b.tensor(T_Q, BF16, x.qkv), kt = b.tensor(T_K, BF16, x.qkv_t);
    desc_t v = b.tensor(T_V, BF16, x.qkv), o = b.tensor(T_O, BF16, x.out);
    desc_t stats = b.tensor(T_STATS, F32, x.rows);
    desc_t scale = b.tensor(T_SCALE, F32, x.scalar, false, true);
    desc_t neg_inf = b.tensor(T_NEG_INF, F32, x.scalar, false, true);
    desc_t s = b.virt(F32, x.scores);
    b.matmul(s, q, kt);
    s = b.pointwise(x.scores, CUDNN_POINTWISE_MUL, s, scale);
    s = b.causal(x.scores, s, neg_inf);
    /* softmax, keeping its log-sum-exp for the backward */
    desc_t m = b.virt(F32, x.rows);
    b.reduction(m, CUDNN_REDUCE_TENSOR_MAX, s);
    desc_t e = b.pointwise(x.scores, CUDNN_POINTWISE_SUB, s, m);
    e = b.pointwise(x.scores, CUDNN_POINTWISE_EXP, e);
    desc_t z = b.virt(F32, x.rows);
    b.reduction(z, CUDNN_REDUCE_TENSOR_ADD, e);
    desc_t log_z = b.pointwise(x.rows, CUDNN_POINTWISE_LOG, z);
    b.pointwise_to(stats, CUDNN_POINTWISE_ADD, m, log_z);
    /* the probabilities in the operands' type, as the engine wants them */
    desc_t p = b.pointwise(x.scores, CUDNN_POINTWISE_DIV, e, z, nullptr, BF16);
    b.matmul(o, p, v);
}

void backward_graph(builder &b, const shapes &x)
{
    desc_t q = b.tensor(T_Q, BF16, x.qkv), kt = b.tensor(T_K, BF16, x.qkv_t);
    desc_t vt = b.tensor(T_V, BF16, x.qkv_t), o = b.tensor(T_O, BF16, x.out);
    desc_t dout = b.tensor(T_DO, BF16, x.out), stats = b.tensor(T_STATS, F32, x.rows);
    desc_t dq = b.tensor(T_DQ, BF16, x.qkv), dk = b.tensor(T_DK, BF16, x.qkv);
    desc_t dv = b.tensor(T_DV, BF16, x.qkv);
    desc_t dq_acc = b.tensor(T_DQ_ACC, F32, x.dq_acc), dsum = b.tensor(T_DSUM, F32, x.rows);
    desc_t scale = b.tensor(T_SCALE, F32, x.scalar, false, true);
    desc_t neg_inf = b.tensor(T_NEG_INF, F32, x.scalar, false, true);
    desc_t one = b.tensor(T_ONE, F32, x.scalar, false, true);
    /* D = rowsum(dO * O) */
    desc_t d = b.pointwise(x.d_out_o, CUDNN_POINTWISE_MUL, dout, o);
    desc_t r = b.virt(F32, x.rows);
    b.reduction(r, CUDNN_REDUCE_TENSOR_ADD, d);
    b.pointwise_to(dsum, CUDNN_POINTWISE_MUL, r, one);
    /* P again, from the forward's statistics */
    desc_t s = b.virt(F32, x.scores);
    b.matmul(s, q, kt);
    s = b.pointwise(x.scores, CUDNN_POINTWISE_MUL, s, scale);
    s = b.pointwise(x.scores, CUDNN_POINTWISE_SUB, s, stats);
    s = b.causal(x.scores, s, neg_inf);
    desc_t p = b.pointwise(x.scores, CUDNN_POINTWISE_EXP, s);
    /* dV = P^T dO */
    desc_t pt = b.virt(BF16, x.scores_t);
    b.reshape(pt, p);
    b.matmul(dv, pt, dout);
    /* dS = (dO V^T - D) * P * scale */
    desc_t ds = b.virt(F32, x.scores);
    b.matmul(ds, dout, vt);
    ds = b.pointwise(x.scores, CUDNN_POINTWISE_SUB, ds, dsum);
    ds = b.pointwise(x.scores, CUDNN_POINTWISE_MUL, ds, p);
    ds = b.pointwise(x.scores, CUDNN_POINTWISE_MUL, ds, scale);
    /* dK = dS^T Q */
    desc_t dst = b.virt(BF16, x.scores_t);
    b.reshape(dst, ds);
    b.matmul(dk, dst, q);
    /* dQ = dS K, accumulated in fp32 */
    desc_t k = b.virt(F32, x.qkv);
    b.reshape(k, kt);
    b.matmul(dq_acc, ds, k);
    b.pointwise_to(dq, CUDNN_POINTWISE_IDENTITY, dq_acc);
}

/* The operation graph of b's ops and the first plan that finalizes, of the
 * engine configs that heuristics mode A, then the fallback list, propose.
 * Failures leave b.note. No SM count target for a stage on a partition (as
 * cuBLAS gets): cuDNN 9.19's attention engines refuse any target but the
 * device's own count. */
void make_plan(builder &b, sdpa_plan &out)
{
    desc_t g = b.make(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
    b.set(g, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, (int64_t)b.ops.size(),
          b.ops.data());
    if (b.h) /* (deprecated in late 9.x, required before) */
        b.set(g, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &b.h);
    b.finalize(g, "finalize operation graph");
    if (!b.ok())
        return;
    std::string tried = "heuristics proposed no engine config that supports the graph";
    for (cudnnBackendHeurMode_t mode : {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK}) {
        desc_t heur = b.make(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
        b.set_desc(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, g);
        b.set(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode);
        b.finalize(heur, "finalize engine heuristics");
        int64_t n = 0;
        if (b.ok())
            b.check(cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                             CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &n, nullptr),
                    "heuristics' engine count");
        /* (the configs cuDNN finds unsupported are left out: got <= n) */
        std::vector<desc_t> cfgs;
        for (int64_t i = 0; i < n; i++)
            cfgs.push_back(b.make(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR));
        int64_t got = 0;
        if (b.ok() && n > 0)
            b.check(cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                             CUDNN_TYPE_BACKEND_DESCRIPTOR, n, &got, cfgs.data()),
                    "heuristics' engine configs");
        /* A plan may still fail (compilation, resources): the next is tried. */
        for (int64_t i = 0; b.ok() && i < got && i < n; i++) {
            desc_t plan = nullptr;
            cudnnStatus_t st =
                cudnnBackendCreateDescriptor(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, &plan);
            if (st == CUDNN_STATUS_SUCCESS)
                st = cudnnBackendSetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_HANDLE,
                                              CUDNN_TYPE_HANDLE, 1, &b.h);
            if (st == CUDNN_STATUS_SUCCESS)
                st = cudnnBackendSetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG,
                                              CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &cfgs[i]);
            if (st == CUDNN_STATUS_SUCCESS)
                st = cudnnBackendFinalize(plan);
            int64_t one = 0;
            if (st == CUDNN_STATUS_SUCCESS)
                st = cudnnBackendGetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE,
                                              CUDNN_TYPE_INT64, 1, &one, &out.ws);
            if (st == CUDNN_STATUS_SUCCESS) {
                b.owned.push_back(plan);
                out.plan = plan;
                return;
            }
            tried = "no engine config's plan finalizes; the last: " +
                    cudnn_note("execution plan", st);
            if (plan)
                cudnnBackendDestroyDescriptor(plan);
        }
        if (!b.ok()) { /* this mode's failure: the next mode may still do */
            tried = b.note;
            b.note.clear();
        }
    }
    b.note = tried;
}

void release_plan(sdpa_plan &p)
{
    for (size_t i = p.owned.size(); i-- > 0;)
        cudnnBackendDestroyDescriptor(p.owned[i]);
    p.owned.clear();
    p.plan = nullptr;
}

/* Builds one graph into p; "" or why not. */
std::string build(cudnnHandle_t h, const shapes &x, bool backward, sdpa_plan &p)
{
    builder b(h, p.owned);
    if (backward)
        backward_graph(b, x);
    else
        forward_graph(b, x);
    make_plan(b, p);
    return b.note.empty() ? b.note : (backward ? "backward: " : "forward: ") + b.note;
}

/* 256-byte aligned carving of the scratch. */
size_t carve(size_t *off, size_t bytes)
{
    size_t at = *off;
    *off += (bytes + 255) / 256 * 256;
    return at;
}

/* Executes plan p with n tensors; a failure is the stage's sticky error. */
void execute(cuda_stage *c, const sdpa_plan &p, int n, const int64_t *uids, void *const *ptrs,
             const char *what)
{
    cudnn_attention *a = c->cudnn;
    desc_t vp = nullptr;
    const char *call = "create variant pack";
    cudnnStatus_t st = cudnnBackendCreateDescriptor(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &vp);
    if (st == CUDNN_STATUS_SUCCESS)
        st = cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, n,
                                      uids);
    if (st == CUDNN_STATUS_SUCCESS)
        st = cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS,
                                      CUDNN_TYPE_VOID_PTR, n, ptrs);
    if (st == CUDNN_STATUS_SUCCESS)
        st = cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR,
                                      1, &a->ws);
    if (st == CUDNN_STATUS_SUCCESS)
        st = cudnnBackendFinalize(vp);
    if (st == CUDNN_STATUS_SUCCESS) {
        call = "cudnnBackendExecute";
        st = cudnnBackendExecute(a->h, p.plan, vp);
    }
    if (st != CUDNN_STATUS_SUCCESS)
        fail(c, what, cudnn_note(call, st).c_str());
    if (vp)
        cudnnBackendDestroyDescriptor(vp);
}

} // namespace

/* --- the stage's entries (cuda_stage.cuh) --------------------------------- */

int cudnn_attention_init(cuda_stage *c, char *why, size_t n)
{
    int hs = c->C / c->H;
    /* 16-byte rows: every head's and K's and V's first element aligned */
    if (hs % 8 != 0) {
        snprintf(why, n, "head size %d is not a multiple of 8", hs);
        return -1;
    }
    cudnn_attention *a = new (std::nothrow) cudnn_attention();
    if (!a) {
        snprintf(why, n, "out of host memory");
        return -1;
    }
    std::string note;
    cudnnStatus_t st = cudnnCreate(&a->h);
    if (st != CUDNN_STATUS_SUCCESS) {
        a->h = nullptr;
        note = cudnn_note("cudnnCreate", st);
    } else if ((st = cudnnSetStream(a->h, c->stream)) != CUDNN_STATUS_SUCCESS) {
        note = cudnn_note("cudnnSetStream", st);
    }
    shapes x(c);
    if (note.empty())
        note = build(a->h, x, false, a->fwd);
    if (note.empty())
        note = build(a->h, x, true, a->bwd);
    size_t NC = (size_t)c->N * c->C, rows = (size_t)c->B * c->H * c->T, bytes = 0;
    size_t at_qkv = carve(&bytes, 3 * NC * 2), at_o = carve(&bytes, NC * 2);
    size_t at_do = carve(&bytes, NC * 2), at_dqkv = carve(&bytes, 3 * NC * 2);
    size_t at_dsum = carve(&bytes, rows * 4), at_dq = carve(&bytes, NC * 4);
    size_t at_ws = carve(&bytes, (size_t)std::max(a->fwd.ws, a->bwd.ws));
    if (note.empty() && !(a->scratch = dev_alloc(c, bytes, MK_WS)))
        note = "out of device memory for its scratch (" + std::to_string(bytes >> 20) + " MiB)";
    c->cudnn = a;
    if (!note.empty()) { /* (nothing allocated on the device) */
        snprintf(why, n, "%s", note.c_str());
        cudnn_attention_release(c);
        return -1;
    }
    char *base = (char *)a->scratch;
    a->qkv = (__nv_bfloat16 *)(base + at_qkv);
    a->o = (__nv_bfloat16 *)(base + at_o);
    a->dout = (__nv_bfloat16 *)(base + at_do);
    a->dqkv = (__nv_bfloat16 *)(base + at_dqkv);
    a->dsum = (float *)(base + at_dsum);
    a->dq_acc = (float *)(base + at_dq);
    a->ws = base + at_ws;
    a->scale = 1.0f / sqrtf((float)hs);
    /* what cudnn-frontend masks with: the lowest float before 9.10 */
    a->neg_inf = cudnnGetVersion() < 91000 ? -FLT_MAX : -INFINITY;
    a->zero_dq_acc = cudnnGetVersion() < 90600;
    return 0;
}

/* Descriptors and handle; the scratch is the stage's device memory, freed
 * with the stage's other allocations. */
void cudnn_attention_release(cuda_stage *c)
{
    cudnn_attention *a = c->cudnn;
    if (!a)
        return;
    c->cudnn = nullptr;
    release_plan(a->bwd);
    release_plan(a->fwd);
    if (a->h)
        cudnnDestroy(a->h);
    delete a;
}

/* bf16 storage hands its bf16 qkv, O, dO and dqkv over as they are; fp32
 * storage converts through the scratch. */
void cudnn_attention_forward_bf16(cuda_stage *c, __nv_bfloat16 *y, float *stats,
                                  const __nv_bfloat16 *qkv)
{
    cudnn_attention *a = c->cudnn;
    int C = c->C;
    void *q = (void *)qkv;
    const int64_t uids[] = {T_Q, T_K, T_V, T_O, T_STATS, T_SCALE, T_NEG_INF};
    void *const ptrs[] = {q, (__nv_bfloat16 *)q + C, (__nv_bfloat16 *)q + 2 * C, y, stats,
                          &a->scale, &a->neg_inf};
    execute(c, a->fwd, 7, uids, ptrs, "cuDNN attention forward");
}

void cudnn_attention_forward(cuda_stage *c, float *y, float *stats, const float *qkv)
{
    cudnn_attention *a = c->cudnn;
    size_t NC = (size_t)c->N * c->C;
    k_to_bf16(a->qkv, qkv, 3 * NC, c->stream);
    check_launch(c, "to_bf16 (attention)");
    cudnn_attention_forward_bf16(c, a->o, stats, a->qkv);
    k_from_bf16(y, a->o, NC, c->stream);
    check_launch(c, "from_bf16 (attention)");
}

void cudnn_attention_backward_bf16(cuda_stage *c, __nv_bfloat16 *dqkv, const __nv_bfloat16 *dy,
                                   const __nv_bfloat16 *qkv, const __nv_bfloat16 *y,
                                   const float *stats)
{
    cudnn_attention *a = c->cudnn;
    size_t NC = (size_t)c->N * c->C;
    int C = c->C;
    __nv_bfloat16 *q = (__nv_bfloat16 *)qkv;
    if (a->zero_dq_acc)
        ck(c, cudaMemsetAsync(a->dq_acc, 0, NC * sizeof(float), c->stream), "cudaMemsetAsync");
    const int64_t uids[] = {T_Q,  T_K,  T_V,      T_O,    T_STATS, T_DO,      T_DQ,
                            T_DK, T_DV, T_DQ_ACC, T_DSUM, T_SCALE, T_NEG_INF, T_ONE};
    void *const ptrs[] = {q,           q + C,      q + 2 * C,        (void *)y,
                          (void *)stats, (void *)dy, dqkv,           dqkv + C,
                          dqkv + 2 * C, a->dq_acc, a->dsum,          &a->scale,
                          &a->neg_inf, &a->one};
    execute(c, a->bwd, 14, uids, ptrs, "cuDNN attention backward");
}

void cudnn_attention_backward(cuda_stage *c, float *dqkv, const float *dy, const float *qkv,
                              const float *y, const float *stats)
{
    cudnn_attention *a = c->cudnn;
    size_t NC = (size_t)c->N * c->C;
    k_to_bf16(a->qkv, qkv, 3 * NC, c->stream);
    k_to_bf16(a->o, y, NC, c->stream);
    k_to_bf16(a->dout, dy, NC, c->stream);
    check_launch(c, "to_bf16 (attention)");
    cudnn_attention_backward_bf16(c, a->dqkv, a->dout, a->qkv, a->o, stats);
    k_from_bf16(dqkv, a->dqkv, 3 * NC, c->stream);
    check_launch(c, "from_bf16 (attention)");
}

} // namespace pp_cuda
