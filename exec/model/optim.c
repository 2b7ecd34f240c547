#include "optim.h"

#include <math.h>
#include <string.h>

pp_optim_config pp_optim_defaults(void)
{
    pp_optim_config c = {
        .kind = PP_OPTIM_ADAMW,
        .muon_momentum = 0.95f,
        /* the paper's code refreshes every 10 steps, both sides, from the
         * gradient's covariances with Adam's beta2 as their decay
         * (cpu_rotated.h) */
        .rotate_every = 10,
        .rotate_sides = PP_ROTATE_BOTH,
        .rotate_basis = PP_ROTATE_GRADIENT,
        .rotate_beta = -1.0f,
    };
    return c;
}

int pp_optim_plain_adamw(const pp_optim_config *cfg)
{
    return cfg->kind == PP_OPTIM_ADAMW && !cfg->delay_buffer;
}

int pp_optim_executable(pp_optim_kind k, pp_err *e)
{
    if (k == PP_OPTIM_ADAMW || k == PP_OPTIM_MUON)
        return 0;
#ifdef PPSCHED_HAVE_LAPACKE
    if (k == PP_OPTIM_ADAMW_ROTATED)
        return 0;
#endif
    return pp_errf(e, "--optimizer %s: this build has no LAPACKE, whose ssyevd gives its "
                      "eigenbases (apt-get install liblapacke-dev, then rebuild); adamw or muon",
                   pp_optim_name(k));
}

static const char *const side_names[] = {[PP_ROTATE_LEFT] = "left", [PP_ROTATE_RIGHT] = "right",
                                         [PP_ROTATE_BOTH] = "both"};
static const char *const basis_names[] = {[PP_ROTATE_GRADIENT] = "gradient",
                                          [PP_ROTATE_MOMENT] = "moment"};

int pp_rotate_sides_parse(const char *s, int *out, pp_err *e)
{
    for (int k = PP_ROTATE_LEFT; k <= PP_ROTATE_BOTH; k++)
        if (!strcmp(s, side_names[k])) {
            *out = k;
            return 0;
        }
    return pp_errf(e, "--rotate-sides: \"%s\" is not left, right or both", s);
}

int pp_rotate_basis_parse(const char *s, pp_rotate_basis *out, pp_err *e)
{
    for (int k = PP_ROTATE_GRADIENT; k <= PP_ROTATE_MOMENT; k++)
        if (!strcmp(s, basis_names[k])) {
            *out = (pp_rotate_basis)k;
            return 0;
        }
    return pp_errf(e, "--rotate-basis: \"%s\" is not gradient or moment", s);
}

const char *pp_rotate_sides_name(int sides)
{
    return sides >= PP_ROTATE_LEFT && sides <= PP_ROTATE_BOTH ? side_names[sides] : "none";
}

const char *pp_rotate_basis_name(pp_rotate_basis b)
{
    return b == PP_ROTATE_MOMENT ? basis_names[b] : basis_names[PP_ROTATE_GRADIENT];
}

double pp_lr_delay_factor(double tau, long t, long T)
{
    double progress = T > 0 ? (double)t / (double)T : 1.0;
    if (progress > 1.0)
        progress = 1.0;
    /* pow(1, x) is exactly 1: a stage without delay keeps its lr's bits */
    return 1.0 / pow(tau, 1.0 - progress);
}
