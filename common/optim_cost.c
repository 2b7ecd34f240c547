#include "optim_cost.h"

#include <string.h>

static const char *const names[] = {
    [PP_OPTIM_ADAMW] = "adamw",
    [PP_OPTIM_MUON] = "muon",
    [PP_OPTIM_ADAMW_ROTATED] = "adamw-rotated",
};

#define NKINDS (sizeof names / sizeof names[0])

int pp_optim_parse(const char *name, pp_optim_kind *out, pp_err *e)
{
    for (size_t k = 0; k < NKINDS; k++)
        if (strcmp(name, names[k]) == 0) {
            *out = (pp_optim_kind)k;
            return 0;
        }
    return pp_errf(e, "--optimizer: unknown optimizer \"%s\" (known: adamw, muon, "
                      "adamw-rotated)", name);
}

const char *pp_optim_name(pp_optim_kind k)
{
    return (size_t)k < NKINDS ? names[k] : "?";
}

/* The hidden matrices of one block, rows x cols in units of the width h. */
static const struct {
    int rows, cols;
} hidden[] = {{3, 1}, {1, 1}, {4, 1}, {1, 4}}; /* qkv, attention proj, MLP up, down */

#define NHIDDEN (sizeof hidden / sizeof hidden[0])

pp_optim_params pp_optim_stage_params(const pp_model_desc *m, int P, int s)
{
    int first, n;
    pp_model_stage_blocks(m, P, s, &first, &n);
    double h = m->dim;
    pp_optim_params p = {0, 0, 0};
    for (size_t k = 0; k < NHIDDEN; k++) {
        double r = hidden[k].rows * h, c = hidden[k].cols * h;
        p.hidden += n * r * c;
        p.rotation += n * 2.0 * (r * r + c * c);
    }
    /* what pp_model_stage_params counts beyond the hidden matrices (one
     * place holds the layout's total; this split must add up to it) */
    p.other = pp_model_stage_params(m, P, s) - p.hidden;
    return p;
}

double pp_optim_state_bytes(const pp_model_desc *m, int P, int s)
{
    pp_optim_params p = pp_optim_stage_params(m, P, s);
    double all = p.hidden + p.other;
    double elems; /* fp32 elements of state */
    switch (m->optimizer) {
    case PP_OPTIM_MUON:
        elems = p.hidden + 2.0 * p.other;
        break;
    case PP_OPTIM_ADAMW_ROTATED:
        elems = 2.0 * all + p.rotation;
        break;
    default:
        elems = 2.0 * all;
        break;
    }
    if (m->bytes_per_elem < 4) /* master weights: the update is applied in fp32 */
        elems += all;
    if (m->delay_correction)
        elems += all;
    return 4.0 * elems;
}

/* Symmetric eigendecomposition with eigenvectors of an n x n matrix:
 * about 9 n^3 FLOPs (Golub and Van Loan, the symmetric QR algorithm;
 * LAPACK's divide and conquer, ssyevd, is of the same order). */
static double eig_flops(double n)
{
    return 9.0 * n * n * n;
}

double pp_optim_step_flops(const pp_model_desc *m, int P, int s)
{
    int first, n;
    pp_model_stage_blocks(m, P, s, &first, &n);
    double h = m->dim, f = 0.0;
    for (size_t k = 0; k < NHIDDEN; k++) {
        double r = hidden[k].rows * h, c = hidden[k].cols * h;
        double a = r < c ? r : c, b = r < c ? c : r;
        if (m->optimizer == PP_OPTIM_MUON) /* per iteration: A = X X^T (2a^2 b),
                                              A^2 (2a^3), (bA + cA^2) X (2a^2 b) */
            f += PP_OPTIM_NS_STEPS * (4.0 * a * a * b + 2.0 * a * a * a);
        else if (m->optimizer == PP_OPTIM_ADAMW_ROTATED) /* G G^T with G^T G, G and m
                                                            rotated, the update rotated
                                                            back: 2rc(r + c) each */
            f += 8.0 * r * c * (r + c) + (eig_flops(r) + eig_flops(c)) / PP_OPTIM_ROTATED_REFRESH;
    }
    return n * f;
}
