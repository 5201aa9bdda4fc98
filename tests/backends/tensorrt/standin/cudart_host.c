/* A STAND-IN for the CUDA runtime (libcudart), for the tests only: "device" memory is host memory.
 *
 * Polygraphy loads libcudart.so* from LD_LIBRARY_PATH with ctypes and calls the seven functions
 * below (polygraphy/cuda/cuda.py). They have the CUDA runtime's documented signatures and return
 * cudaSuccess (0) or an error code, so Polygraphy's real buffer and stream code runs here; the
 * stand-in tensorrt module reads and writes these buffers directly. Not CUDA: no GPU is involved.
 * standin_live() counts allocations and streams not yet freed (the tests check Polygraphy frees all).
 */
#include <stdlib.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

static long live = 0;

int cudaMalloc(void** ptr, size_t size) {
    *ptr = malloc(size ? size : 1);
    if (*ptr == NULL) return 2; /* cudaErrorMemoryAllocation */
    ++live;
    return 0;
}

int cudaFree(void* ptr) {
    if (ptr != NULL) {
        free(ptr);
        --live;
    }
    return 0;
}

int cudaMemcpy(void* dst, const void* src, size_t count, int kind) {
    (void)kind;
    if (count) memcpy(dst, src, count);
    return 0;
}

int cudaMemcpyAsync(void* dst, const void* src, size_t count, int kind, void* stream) {
    (void)kind;
    if (stream == NULL) return 400; /* cudaErrorInvalidResourceHandle: Polygraphy always passes its stream */
    if (count) memcpy(dst, src, count);
    return 0;
}

int cudaStreamCreate(void** stream) {
    *stream = malloc(16);
    ++live;
    return 0;
}

int cudaStreamSynchronize(void* stream) { return stream == NULL ? 400 : 0; }

int cudaStreamDestroy(void* stream) {
    free(stream);
    --live;
    return 0;
}

long standin_live(void) { return live; }

#ifdef __cplusplus
}
#endif
