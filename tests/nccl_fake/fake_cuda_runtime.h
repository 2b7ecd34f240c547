/* The CUDA runtime as tests/nccl_fake/ fakes it: the declarations that
 * exec/cuda/transport_nccl.cu uses, and nothing else. The build copies this
 * file into an include directory of its own as <cuda_runtime.h>, so the
 * transport compiles unchanged, as C++, against fake_runtime.cpp. See
 * fake_runtime.cpp for what the fake models. */
#ifndef PP_FAKE_CUDA_RUNTIME_H
#define PP_FAKE_CUDA_RUNTIME_H

#include <stddef.h>

/* The real values of the codes the transport and the fake use. */
typedef enum {
    cudaSuccess = 0,
    cudaErrorMemoryAllocation = 2,
    cudaErrorNotReady = 600
} cudaError_t;

typedef struct fake_stream *cudaStream_t; /* NULL: the host, synchronous */
typedef struct fake_event *cudaEvent_t;

enum cudaMemcpyKind { cudaMemcpyDeviceToDevice = 3 };

#define cudaStreamNonBlocking 0x01u
#define cudaEventDisableTiming 0x02u

#ifdef __cplusplus
extern "C" {
#endif

cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetLastError(void);
const char *cudaGetErrorString(cudaError_t error);

cudaError_t cudaMalloc(void **ptr, size_t bytes);
cudaError_t cudaFree(void *ptr);
cudaError_t cudaMemsetAsync(void *ptr, int value, size_t bytes, cudaStream_t stream);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind,
                            cudaStream_t stream);

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned flags);

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned flags);
cudaError_t cudaEventDestroy(cudaEvent_t event);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream);
cudaError_t cudaEventQuery(cudaEvent_t event);

#ifdef __cplusplus
}
#endif

#endif
