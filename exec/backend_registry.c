#include <string.h>

#include "backend.h"

#ifdef PPSCHED_HAVE_CUDA
extern const pp_backend_ops pp_backend_cuda;
int pp_cuda_available(pp_err *e);
#endif

const pp_backend_ops *pp_backend_find(const char *name, pp_err *e)
{
    if (strcmp(name, "cpu") == 0)
        return &pp_backend_cpu;
    if (strcmp(name, "cuda") == 0) {
#ifdef PPSCHED_HAVE_CUDA
        if (pp_cuda_available(e) < 0)
            return NULL;
        return &pp_backend_cuda;
#else
        pp_errf(e, "--backend cuda: this build has no CUDA backend (nvcc was not found at "
                   "configure time)");
        return NULL;
#endif
    }
    pp_errf(e, "--backend: unknown backend \"%s\" (cpu, cuda)", name);
    return NULL;
}
