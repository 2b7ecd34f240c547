/* Which optimizer a stage runs, as the runtime and the tools name it: the
 * configuration every backend receives (backend.h's optimizer_init), the
 * ones the executor has (the names are common/optim_cost.h's, shared with
 * the simulator's memory model), and the learning-rate correction for a
 * stage's delay that any optimizer may use. The CPU optimizers themselves
 * are in cpu_optim.h; the runtime never looks inside them.
 *
 * - adamw: AdamW on every parameter (adamw.h).
 * - muon: momentum with Nesterov, the update of every hidden matrix (the
 *   attention and MLP weights of the blocks) orthogonalised by a
 *   Newton-Schulz iteration; AdamW for the embeddings, the output layer,
 *   biases and LayerNorm (cpu_optim.h says the iteration, its
 *   coefficients, the learning-rate scale and their sources).
 * - adamw-rotated: Adam run in a rotated basis for every hidden matrix
 *   (the eigenvectors of running averages of G G^T and G^T G, refreshed
 *   every few updates: arXiv 2602.03515); AdamW for the rest
 *   (cpu_rotated.h has the update, its options and their sources).
 * - the delay correction, for any of them: the applied update is
 *   u_t + beta (u_t - u_{t-1}), u the optimizer's own update; one more
 *   buffer of the stage's size. Our reading of the summary of arXiv
 *   2606.30634 (an error-feedback-like correction from the difference of
 *   successive updates), not its exact formula. */
#ifndef PP_OPTIM_H
#define PP_OPTIM_H

#include "error.h"
#include "model.h"       /* pp_optim_kind */
#include "optim_cost.h"  /* pp_optim_parse, pp_optim_name: the names both tools take */

/* adamw-rotated: the sides of a matrix W [rows][cols] that rotate (left:
 * its rows' space, by Q_L [rows][rows]; right: its columns', by Q_R
 * [cols][cols]), and the matrix S whose running covariances S S^T and
 * S^T S give the bases: the gradient, or the first moment. */
enum { PP_ROTATE_LEFT = 1, PP_ROTATE_RIGHT = 2, PP_ROTATE_BOTH = 3 };
typedef enum { PP_ROTATE_GRADIENT, PP_ROTATE_MOMENT } pp_rotate_basis;

typedef struct {
    pp_optim_kind kind;
    float muon_momentum; /* muon: the momentum's decay (default 0.95) */
    /* adamw-rotated: refresh the bases at the first update and every
     * rotate_every-th (default 10; 0: never, the bases stay as they are,
     * which is how a test pins one); the sides that rotate (default
     * both); the bases' source (default the gradient); the covariances'
     * decay (< 0, the default: the step's beta2). */
    int rotate_every, rotate_sides;
    pp_rotate_basis rotate_basis;
    float rotate_beta;
    /* The delay correction: keep the last update (one buffer of the
     * stage's size, saved in checkpoints) and apply
     * u_t + delay_beta (u_t - u_{t-1}). Off (0) by default; on with
     * delay_beta 0 it applies u_t exactly, bit for bit. */
    int delay_buffer;
    float delay_beta;
} pp_optim_config;

/* adamw, momentum 0.95, rotation every 10 updates on both sides from the
 * gradient with decay beta2, no delay correction. An all-zero config
 * (memset) is AdamW as well. */
pp_optim_config pp_optim_defaults(void);

/* 1 when cfg asks for nothing but AdamW: what a backend without other
 * optimizers can run. */
int pp_optim_plain_adamw(const pp_optim_config *cfg);

/* 0 when the executor has optimizer k, else -1 with one line: every
 * build has adamw and muon; adamw-rotated needs LAPACKE (its eigenbases
 * come from LAPACK's ssyevd), which the build may lack. */
int pp_optim_executable(pp_optim_kind k, pp_err *e);

/* --rotate-sides and --rotate-basis: "left", "right", "both" into
 * PP_ROTATE_*; "gradient", "moment"; -1 with one line for another word.
 * The names back, for banners and checkpoints. */
int pp_rotate_sides_parse(const char *s, int *out, pp_err *e);
int pp_rotate_basis_parse(const char *s, pp_rotate_basis *out, pp_err *e);
const char *pp_rotate_sides_name(int sides);
const char *pp_rotate_basis_name(pp_rotate_basis b);

/* PipeMare's learning-rate correction for a stage whose gradients are tau
 * updates late: the factor 1 / tau^(1 - min(t / T, 1)) of the
 * learning rate at the stage's update t (0-based) with annealing length T
 * >= 1; a stage without delay takes tau = 1, which gives exactly 1 (Yang
 * et al., "PipeMare: Asynchronous Pipeline Parallel DNN Training", 2021:
 * the step shrinks with the delay early on and recovers by update T). */
double pp_lr_delay_factor(double tau, long t, long T);

/* The delay correction of one parameter: the update to apply,
 * u + beta (u - *prev), and u kept in *prev for the next step. With beta
 * 0 it is u itself, bit for bit (finite updates). */
static inline float pp_delay_correct(float u, float *prev, float beta)
{
    float applied = u + beta * (u - *prev);
    *prev = u;
    return applied;
}

#endif
