#include "optim.h"

#include <math.h>

pp_optim_config pp_optim_defaults(void)
{
    pp_optim_config c = {PP_OPTIM_ADAMW, 0.95f, 0, 0.0f};
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
    return pp_errf(e, "--optimizer %s: not yet in pprun (basis rotation is a later step; ppsim "
                      "models its memory); adamw or muon", pp_optim_name(k));
}

double pp_lr_delay_factor(double tau, long t, long T)
{
    double progress = T > 0 ? (double)t / (double)T : 1.0;
    if (progress > 1.0)
        progress = 1.0;
    /* pow(1, x) is exactly 1: a stage without delay keeps its lr's bits */
    return 1.0 / pow(tau, 1.0 - progress);
}
