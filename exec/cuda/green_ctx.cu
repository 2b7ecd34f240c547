/* SM partitions as CUDA green contexts: see green_ctx.h. */
#include "green_ctx.h"

#include <cuda_runtime.h>
#include <cudaTypedefs.h>

#include <atomic>
#include <cstring>
#include <mutex>
#include <vector>

namespace {

/* --- the driver API, through cudart ---------------------------------------- */

struct driver_api {
    PFN_cuGetErrorString_v6000 GetErrorString;
    PFN_cuDeviceGet_v2000 DeviceGet;
    PFN_cuCtxGetCurrent_v4000 CtxGetCurrent;
    PFN_cuCtxSetCurrent_v4000 CtxSetCurrent;
    PFN_cuStreamDestroy_v4000 StreamDestroy;
    PFN_cuDeviceGetDevResource_v12040 DeviceGetDevResource;
    PFN_cuDevSmResourceSplitByCount_v12040 DevSmResourceSplitByCount;
    PFN_cuDevResourceGenerateDesc_v12040 DevResourceGenerateDesc;
    PFN_cuGreenCtxCreate_v12040 GreenCtxCreate;
    PFN_cuGreenCtxDestroy_v12040 GreenCtxDestroy;
    PFN_cuCtxFromGreenCtx_v12040 CtxFromGreenCtx;
    PFN_cuGreenCtxStreamCreate_v12050 GreenCtxStreamCreate;
};

driver_api drv;
/* read without the once_flag by the context switches of every call */
std::atomic<bool> drv_ok{false};
char drv_why[200];
std::once_flag drv_once;

/* Asks for the ABI of the headers compiled against (CUDA_VERSION): the
 * structures passed (CUdevResource) have that layout. */
template <class F> bool load(const char *name, F *fn)
{
    void *p = nullptr;
    cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
    cudaError_t rc =
        cudaGetDriverEntryPointByVersion(name, &p, CUDA_VERSION, cudaEnableDefault, &q);
    if (rc != cudaSuccess || !p || q != cudaDriverEntryPointSuccess) {
        cudaGetLastError();
        snprintf(drv_why, sizeof drv_why, "the CUDA driver has no %s for CUDA %d.%d (%s)", name,
                 CUDA_VERSION / 1000, CUDA_VERSION % 1000 / 10,
                 rc != cudaSuccess ? cudaGetErrorString(rc)
                 : q == cudaDriverEntryPointVersionNotSufficent ? "driver too old"
                                                                : "symbol not found");
        return false;
    }
    *fn = reinterpret_cast<F>(p);
    return true;
}

void load_driver()
{
    bool ok = load("cuGetErrorString", &drv.GetErrorString) &&
             load("cuDeviceGet", &drv.DeviceGet) &&
             load("cuCtxGetCurrent", &drv.CtxGetCurrent) &&
             load("cuCtxSetCurrent", &drv.CtxSetCurrent) &&
             load("cuStreamDestroy", &drv.StreamDestroy) &&
             load("cuDeviceGetDevResource", &drv.DeviceGetDevResource) &&
             load("cuDevSmResourceSplitByCount", &drv.DevSmResourceSplitByCount) &&
             load("cuDevResourceGenerateDesc", &drv.DevResourceGenerateDesc) &&
             load("cuGreenCtxCreate", &drv.GreenCtxCreate) &&
             load("cuGreenCtxDestroy", &drv.GreenCtxDestroy) &&
             load("cuCtxFromGreenCtx", &drv.CtxFromGreenCtx) &&
             load("cuGreenCtxStreamCreate", &drv.GreenCtxStreamCreate);
    drv_ok = ok;
}

const char *why(CUresult r)
{
    const char *s = nullptr;
    if (drv.GetErrorString && drv.GetErrorString(r, &s) == CUDA_SUCCESS && s)
        return s;
    return "unknown CUDA driver error";
}

/* --- the table --------------------------------------------------------------- */

/* Hopper needs partitions of at least 8 SMs and a multiple of 8 (the driver
 * documentation's guideline for compute capability 9.0+; a multiple of 8 is
 * also valid on 8.x, which needs multiples of 2, at least 4). */
const unsigned SM_UNIT = 8;

/* One split of a device: kept for the process (a resource descriptor has
 * no destroy call), with the green contexts no stage holds now. */
struct split {
    int device, partitions;
    CUdevice dev;
    std::vector<CUdevResourceDesc> desc; /* per group */
    std::vector<int> sms;                /* per group */
    std::vector<std::vector<CUgreenCtx>> idle;
};

std::mutex mu;
std::vector<split *> table;

int no_room(int device, unsigned total, int partitions, unsigned min, pp_err *e)
{
    cudaDeviceProp p;
    const char *name = "?";
    if (cudaGetDeviceProperties(&p, device) == cudaSuccess)
        name = p.name;
    else
        cudaGetLastError();
    return pp_errf(e,
                   "device %d (%s) has %u SMs: %d stages cannot each get an SM partition of "
                   "at least %u SMs (a multiple of %u)",
                   device, name, total, partitions, min, SM_UNIT);
}

/* Splits the device's SMs into `partitions` equal groups (mu held). */
split *make_split(int device, int partitions, pp_err *e)
{
    /* The green contexts retain the primary context: have it alive first so
     * that it is not initialised and torn down with each of them. */
    cudaError_t crc = cudaSetDevice(device);
    if (crc == cudaSuccess)
        crc = cudaFree(nullptr);
    if (crc != cudaSuccess) {
        cudaGetLastError();
        pp_errf(e, "device %d: %s", device, cudaGetErrorString(crc));
        return nullptr;
    }
    CUdevice dev;
    CUdevResource all;
    memset(&all, 0, sizeof all);
    CUresult rc = drv.DeviceGet(&dev, device);
    if (rc == CUDA_SUCCESS)
        rc = drv.DeviceGetDevResource(dev, &all, CU_DEV_RESOURCE_TYPE_SM);
    if (rc != CUDA_SUCCESS) {
        pp_errf(e, "device %d: cuDeviceGetDevResource (SM): %s", device, why(rc));
        return nullptr;
    }
    unsigned total = all.sm.smCount;
    unsigned min = all.sm.minSmPartitionSize > SM_UNIT ? all.sm.minSmPartitionSize : SM_UNIT;
    unsigned per = total / (unsigned)partitions / SM_UNIT * SM_UNIT;
    if (per < min) {
        no_room(device, total, partitions, min, e);
        return nullptr;
    }
    std::vector<CUdevResource> groups((size_t)partitions);
    CUdevResource rest;
    unsigned n = (unsigned)partitions;
    rc = drv.DevSmResourceSplitByCount(groups.data(), &n, &all, &rest, 0, per);
    if (rc != CUDA_SUCCESS) {
        pp_errf(e, "device %d: splitting %u SMs into %d partitions of %u SMs: %s", device, total,
                partitions, per, why(rc));
        return nullptr;
    }
    if (n < (unsigned)partitions) { /* the driver rounded the size up */
        pp_errf(e, "device %d: its %u SMs give only %u SM partitions of %u SMs, not %d", device,
                total, n, per, partitions);
        return nullptr;
    }
    split *sp = new split();
    sp->device = device;
    sp->partitions = partitions;
    sp->dev = dev;
    sp->desc.resize((size_t)partitions);
    sp->sms.resize((size_t)partitions);
    sp->idle.resize((size_t)partitions);
    for (int i = 0; i < partitions; i++) {
        rc = drv.DevResourceGenerateDesc(&sp->desc[i], &groups[i], 1);
        if (rc != CUDA_SUCCESS) {
            pp_errf(e, "device %d: cuDevResourceGenerateDesc (SM partition %d): %s", device, i,
                    why(rc));
            delete sp; /* descriptors have no destroy call */
            return nullptr;
        }
        sp->sms[i] = (int)groups[i].sm.smCount;
    }
    return sp;
}

split *find_split(int device, int partitions, pp_err *e)
{
    for (split *sp : table)
        if (sp->device == device && sp->partitions == partitions)
            return sp;
    split *sp = make_split(device, partitions, e);
    if (sp)
        table.push_back(sp);
    return sp;
}

} // namespace

int pp_green_open(int device, int partition, int partitions, pp_green *out, pp_err *e)
{
    memset(out, 0, sizeof *out);
    if (partitions < 1 || partition < 0 || partition >= partitions)
        return pp_errf(e, "SM partition %d of %d does not exist", partition, partitions);
    std::call_once(drv_once, load_driver);
    if (!drv_ok)
        return pp_errf(e, "SM partitions need CUDA green contexts: %s", drv_why);
    CUgreenCtx g = nullptr;
    split *sp;
    {
        std::lock_guard<std::mutex> lk(mu);
        sp = find_split(device, partitions, e);
        if (!sp)
            return -1;
        if (!sp->idle[partition].empty()) {
            g = sp->idle[partition].back();
            sp->idle[partition].pop_back();
        } else {
            CUresult rc = drv.GreenCtxCreate(&g, sp->desc[partition], sp->dev,
                                             CU_GREEN_CTX_DEFAULT_STREAM);
            if (rc != CUDA_SUCCESS)
                return pp_errf(e, "device %d: cuGreenCtxCreate (SM partition %d of %d): %s",
                               device, partition, partitions, why(rc));
        }
    }
    CUcontext ctx = nullptr;
    CUstream st = nullptr;
    const char *what = "cuCtxFromGreenCtx";
    CUresult rc = drv.CtxFromGreenCtx(&ctx, g);
    if (rc == CUDA_SUCCESS) {
        what = "cuGreenCtxStreamCreate";
        rc = drv.GreenCtxStreamCreate(&st, g, CU_STREAM_NON_BLOCKING, 0);
    }
    if (rc != CUDA_SUCCESS) {
        std::lock_guard<std::mutex> lk(mu);
        sp->idle[partition].push_back(g);
        return pp_errf(e, "device %d: %s (SM partition %d of %d): %s", device, what, partition,
                       partitions, why(rc));
    }
    out->device = device;
    out->partition = partition;
    out->partitions = partitions;
    out->sms = sp->sms[partition];
    out->green = g;
    out->ctx = ctx;
    out->stream = st;
    return 0;
}

void pp_green_close(pp_green *g)
{
    if (!g->green)
        return;
    if (g->stream)
        drv.StreamDestroy(g->stream);
    std::lock_guard<std::mutex> lk(mu);
    for (split *sp : table)
        if (sp->device == g->device && sp->partitions == g->partitions) {
            sp->idle[g->partition].push_back(g->green);
            break;
        }
    memset(g, 0, sizeof *g);
}

void pp_green_release_all(void)
{
    if (!drv_ok)
        return;
    std::lock_guard<std::mutex> lk(mu);
    for (split *sp : table)
        for (auto &v : sp->idle) {
            for (CUgreenCtx g : v)
                drv.GreenCtxDestroy(g);
            v.clear();
        }
}

CUcontext pp_green_current(void)
{
    CUcontext c = nullptr;
    if (drv_ok && drv.CtxGetCurrent(&c) != CUDA_SUCCESS)
        c = nullptr;
    return c;
}

void pp_green_make_current(CUcontext ctx)
{
    if (drv_ok)
        drv.CtxSetCurrent(ctx);
}
