/* The CPU backend's building blocks: the thread team, the matrix products
 * (OpenBLAS where the build has it) against the own kernel and a double
 * reference, the vector exp/tanh, GELU and attention split over a team,
 * and training that repeats bit for bit at a fixed thread count. */
#include <check.h>
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/cpu_gemm.h"
#include "model/cpu_pool.h"
#include "model/cpu_vmath.h"
#include "model/gpt_cpu_layers.h"
#include "test_support.h"

static float frand(uint64_t *s)
{
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((*s >> 40) & 0xFFFFFF) / (float)0x1000000 * 2.0f - 1.0f;
}

static float *rand_floats(size_t n, uint64_t seed)
{
    float *x = malloc(n * sizeof *x);
    for (size_t i = 0; i < n; i++)
        x[i] = frand(&seed);
    return x;
}

/* --- the thread team ------------------------------------------------- */

typedef struct {
    atomic_int *hits;
    int *part_of;
} cover_ctx;

static void cover(void *ctx, int lo, int hi, int part)
{
    cover_ctx *c = ctx;
    for (int i = lo; i < hi; i++) {
        atomic_fetch_add(&c->hits[i], 1);
        c->part_of[i] = part;
    }
}

START_TEST(pool_runs_every_index_once_in_contiguous_parts)
{
    int sizes[] = {0, 1, 2, 3, 7, 64, 1000};
    for (int threads = 1; threads <= 4; threads++) {
        pp_pool *p = NULL;
        pp_err e = {{0}};
        ck_assert_msg(pp_pool_create(threads, &p, &e) == 0, "%s", e.msg);
        ck_assert_int_eq(pp_pool_threads(p), threads);
        for (int rep = 0; rep < 50; rep++)
            for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
                int n = sizes[k];
                atomic_int hits[1000];
                int part_of[1000];
                for (int i = 0; i < n; i++)
                    atomic_init(&hits[i], 0);
                cover_ctx c = {hits, part_of};
                pp_pool_run(p, n, cover, &c);
                for (int i = 0; i < n; i++) {
                    ck_assert_msg(atomic_load(&hits[i]) == 1, "threads %d, n %d: index %d ran %d times",
                                  threads, n, i, atomic_load(&hits[i]));
                    /* part t of T covers [n t / T, n (t+1) / T) */
                    int want = n < 2 ? 0 : (int)(((long long)(i + 1) * threads - 1) / n);
                    ck_assert_msg(part_of[i] == want, "threads %d, n %d: index %d in part %d, not %d",
                                  threads, n, i, part_of[i], want);
                }
            }
        pp_pool_free(p);
    }
    pp_pool_run(NULL, 5, cover, &(cover_ctx){(atomic_int[5]){0}, (int[5]){0}});
}
END_TEST

START_TEST(pool_rejects_zero_threads)
{
    pp_pool *p = NULL;
    pp_err e = {{0}};
    ck_assert_int_lt(pp_pool_create(0, &p, &e), 0);
    ck_assert_ptr_nonnull(strstr(e.msg, "at least 1"));
}
END_TEST

/* --- matrix products ------------------------------------------------- */

typedef enum { AB, ABT, ATB } kind;

/* C = (accumulate ? C : 0) + op(A) op(B) in double; |op(A)| |op(B)| in scale. */
static void reference(kind k, const float *A, const float *B, const float *C0, int M, int N, int K,
                      int accumulate, double *C, double *scale)
{
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = accumulate ? C0[(size_t)i * N + j] : 0.0, a = fabs(s);
            for (int p = 0; p < K; p++) {
                double x = k == ATB ? A[(size_t)p * M + i] : A[(size_t)i * K + p];
                double y = k == ABT ? B[(size_t)j * K + p] : B[(size_t)p * N + j];
                s += x * y;
                a += fabs(x * y);
            }
            C[(size_t)i * N + j] = s;
            scale[(size_t)i * N + j] = a;
        }
}

static void run_mm(kind k, pp_pool *pool, float *C, const float *A, const float *B, float *bt,
                   int M, int N, int K, int accumulate)
{
    if (k == AB)
        pp_mm_ab(pool, C, A, B, M, N, K, accumulate);
    else if (k == ABT)
        pp_mm_abt(pool, C, A, B, NULL, bt, M, N, K, accumulate);
    else
        pp_mm_atb(pool, C, A, B, M, N, K, accumulate);
}

/* Every product, on teams of 1 to 3, against the double reference (1e-5
 * relative to the sum of |products|) and against the own kernel, on odd
 * shapes as well as round ones; and the same bits on every repeat. */
START_TEST(matrix_products_match_reference_and_own_kernel)
{
    int shapes[][3] = {{1, 1, 1}, {7, 13, 5}, {33, 17, 65}, {64, 64, 64}, {3, 129, 2},
                       {130, 7, 31}, {512, 192, 64}, {96, 65, 256}};
    pp_pool *pools[3] = {NULL, NULL, NULL};
    pp_err e = {{0}};
    for (int t = 2; t <= 3; t++)
        ck_assert_msg(pp_pool_create(t, &pools[t - 1], &e) == 0, "%s", e.msg);
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        int M = shapes[si][0], N = shapes[si][1], K = shapes[si][2];
        for (kind k = AB; k <= ATB; k++)
            for (int acc = 0; acc <= 1; acc++) {
                float *A = rand_floats((size_t)M * K, 1 + si), *B = rand_floats((size_t)K * N, 7 + si);
                float *C0 = rand_floats((size_t)M * N, 11 + si);
                float *bt = malloc((size_t)K * N * sizeof *bt), *own = malloc((size_t)M * N * sizeof *own);
                double *ref = malloc((size_t)M * N * sizeof *ref), *sc = malloc((size_t)M * N * sizeof *sc);
                reference(k, A, B, C0, M, N, K, acc, ref, sc);
                /* the own kernel: C += A(i,k) B[k][j] with B row-major [K][N] */
                memcpy(own, C0, (size_t)M * N * sizeof *own);
                if (!acc)
                    memset(own, 0, (size_t)M * N * sizeof *own);
                if (k == ABT)
                    pp_transpose(bt, B, N, K);
                pp_gemm_acc(own, A, k == ATB ? 1 : (size_t)K, k == ATB ? (size_t)M : 1,
                            k == ABT ? bt : B, M, N, K);
                for (int t = 0; t < 3; t++) {
                    float *C = malloc((size_t)M * N * sizeof *C), *C2 = malloc((size_t)M * N * sizeof *C2);
                    memcpy(C, C0, (size_t)M * N * sizeof *C);
                    memcpy(C2, C0, (size_t)M * N * sizeof *C2);
                    run_mm(k, pools[t], C, A, B, bt, M, N, K, acc);
                    run_mm(k, pools[t], C2, A, B, bt, M, N, K, acc);
                    ck_assert_msg(memcmp(C, C2, (size_t)M * N * sizeof *C) == 0,
                                  "%s: %dx%dx%d kind %d, %d threads: not the same bits twice",
                                  pp_mm_engine(), M, N, K, k, t + 1);
                    for (size_t i = 0; i < (size_t)M * N; i++) {
                        double tol = 1e-5 * (sc[i] > 1e-30 ? sc[i] : 1.0);
                        ck_assert_msg(fabs(C[i] - ref[i]) <= tol && fabs(C[i] - (double)own[i]) <= tol,
                                      "%s: %dx%dx%d kind %d acc %d, %d threads, element %zu: %g, "
                                      "own kernel %g, reference %g", pp_mm_engine(), M, N, K, k, acc,
                                      t + 1, i, C[i], own[i], ref[i]);
                    }
                    free(C);
                    free(C2);
                }
                free(A); free(B); free(C0); free(bt); free(own); free(ref); free(sc);
            }
    }
    for (int t = 1; t < 3; t++)
        pp_pool_free(pools[t]);
}
END_TEST

/* --- vector math ------------------------------------------------------ */

static int32_t ulp_distance(float a, float b)
{
    int32_t ia, ib;
    memcpy(&ia, &a, sizeof ia);
    memcpy(&ib, &b, sizeof ib);
    if (ia < 0) ia = INT32_MIN - ia;
    if (ib < 0) ib = INT32_MIN - ib;
    return ia > ib ? ia - ib : ib - ia;
}

START_TEST(vector_exp_is_within_two_ulp_and_tanh_within_3e_7)
{
    int32_t worst = 0;
    float at = 0;
    for (float x = -87.0f; x < 88.0f; x += 0.00731f) {
        float in[PP_VW], out[PP_VW];
        for (int i = 0; i < PP_VW; i++)
            in[i] = x + i * 1e-4f;
        pp_vstore(out, pp_vexp(pp_vload(in)));
        for (int i = 0; i < PP_VW; i++) {
            int32_t d = ulp_distance(out[i], (float)exp((double)in[i]));
            if (d > worst) { worst = d; at = in[i]; }
        }
    }
    ck_assert_msg(worst <= 2, "exp: %d ulp at %g", worst, at);
    double werr = 0;
    for (float u = -12.0f; u < 12.0f; u += 0.0013f) {
        float out[PP_VW];
        pp_vstore(out, pp_vtanh(pp_vset(u)));
        double err = fabs(out[0] - tanh((double)u));
        werr = err > werr ? err : werr;
    }
    ck_assert_msg(werr <= 3e-7, "tanh: absolute error %g", werr);
    float big[PP_VW];
    pp_vstore(big, pp_vtanh(pp_vset(200.0f)));
    ck_assert(big[0] == 1.0f);
    pp_vstore(big, pp_vtanh(pp_vset(-200.0f)));
    ck_assert(big[0] == -1.0f);
}
END_TEST

/* GELU (ragged length) and attention on a team of 3 give the bits of one
 * thread; GELU is within 1e-6 of the double formula. */
START_TEST(gelu_and_attention_on_a_team_equal_one_thread)
{
    pp_pool *pool = NULL;
    pp_err e = {{0}};
    ck_assert_msg(pp_pool_create(3, &pool, &e) == 0, "%s", e.msg);
    size_t n = 5 * 1024 + 13;
    float *x = rand_floats(n, 3), *d = rand_floats(n, 4);
    for (size_t i = 0; i < n; i++)
        x[i] *= 6.0f;
    float *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b);
    pp_cpu_gelu_forward(NULL, a, x, n);
    pp_cpu_gelu_forward(pool, b, x, n);
    ck_assert(memcmp(a, b, n * sizeof *a) == 0);
    for (size_t i = 0; i < n; i++) {
        double xi = x[i], g = 0.5 * xi * (1 + tanh(0.7978845608028654 * (xi + 0.044715 * xi * xi * xi)));
        ck_assert_msg(fabs(a[i] - g) <= 1e-6 * (1 + fabs(g)), "gelu(%g) = %g, not %g", xi, a[i], g);
    }
    pp_cpu_gelu_backward(NULL, a, x, d, n);
    pp_cpu_gelu_backward(pool, b, x, d, n);
    ck_assert(memcmp(a, b, n * sizeof *a) == 0);

    pp_cpu_att_dims dm = {3, 17, 24, 4};
    size_t NC = (size_t)dm.B * dm.T * dm.C, TT = (size_t)dm.B * dm.H * dm.T * dm.T;
    float *qkv = rand_floats(3 * NC, 9), *dy = rand_floats(NC, 10);
    size_t scr = pp_cpu_attention_scratch(dm);
    float *s3 = malloc(3 * scr * sizeof *s3), *s1 = malloc(scr * sizeof *s1);
    float *y1 = malloc(NC * sizeof *y1), *y3 = malloc(NC * sizeof *y3);
    float *att1 = malloc(TT * sizeof *att1), *att3 = malloc(TT * sizeof *att3);
    float *dq1 = malloc(3 * NC * sizeof *dq1), *dq3 = malloc(3 * NC * sizeof *dq3);
    pp_cpu_attention_forward(NULL, y1, att1, qkv, s1, dm);
    pp_cpu_attention_forward(pool, y3, att3, qkv, s3, dm);
    ck_assert(memcmp(y1, y3, NC * sizeof *y1) == 0 && memcmp(att1, att3, TT * sizeof *att1) == 0);
    pp_cpu_attention_backward(NULL, dq1, s1, dy, qkv, att1, dm);
    pp_cpu_attention_backward(pool, dq3, s3, dy, qkv, att1, dm);
    ck_assert(memcmp(dq1, dq3, 3 * NC * sizeof *dq1) == 0);
    free(x); free(d); free(a); free(b); free(qkv); free(dy); free(s3); free(s1);
    free(y1); free(y3); free(att1); free(att3); free(dq1); free(dq3);
    pp_pool_free(pool);
}
END_TEST

/* --- training --------------------------------------------------------- */

static void train(int threads, double *loss, int n)
{
    pp_schedule ir = test_schedule("1f1b-flush", 2, 3, n);
    pp_model_desc m = test_model(2, 48, 3, 24, 50, 3);
    pp_err e = {{0}};
    pp_run_config c = test_run_config(&ir, &m, &pp_backend_cpu, 60);
    c.threads = threads;
    pp_run_result r;
    ck_assert_msg(pp_run(&c, &r, &e) == 0, "%s", e.msg);
    ck_assert_int_eq(r.steps, n);
    memcpy(loss, r.step_loss, (size_t)n * sizeof *loss);
    pp_run_result_free(&r);
    pp_schedule_free(&ir);
}

START_TEST(training_repeats_bit_for_bit_at_one_and_two_threads)
{
    enum { N = 4 };
    for (int threads = 1; threads <= 2; threads++) {
        double a[N], b[N];
        train(threads, a, N);
        train(threads, b, N);
        for (int i = 0; i < N; i++)
            ck_assert_msg(memcmp(&a[i], &b[i], sizeof a[i]) == 0,
                          "--threads %d: update %d loss %.9g then %.9g", threads, i + 1, a[i], b[i]);
        ck_assert(a[N - 1] < a[0]);
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("cpu_kernels");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, pool_runs_every_index_once_in_contiguous_parts);
    tcase_add_test(tc, pool_rejects_zero_threads);
    tcase_add_test(tc, matrix_products_match_reference_and_own_kernel);
    tcase_add_test(tc, vector_exp_is_within_two_ulp_and_tanh_within_3e_7);
    tcase_add_test(tc, gelu_and_attention_on_a_team_equal_one_thread);
    tcase_add_test(tc, training_repeats_bit_for_bit_at_one_and_two_threads);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
