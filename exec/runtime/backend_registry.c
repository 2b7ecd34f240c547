/* Backends by name: the CPU reference always, CUDA when this build has it.
 * Here rather than in model/, which must not know the CUDA room. */
#include <string.h>

#include "model/backend.h"
#include "runtime.h"

#ifdef PPSCHED_HAVE_CUDA
#include "cuda/cuda_backend.h"
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
