/* A tiny C interface over qforge's block kernels, used only by the Python oracle tests (ctypes).
 * Every function returns 0 on success and a negative code on failure; qforge_last_error() then
 * gives the message (thread-local, valid until the next call on the same thread). */
#ifndef QFORGE_CAPI_QFORGE_C_H_
#define QFORGE_CAPI_QFORGE_C_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { QFORGE_OK = 0, QFORGE_ERR_INVALID = -1, QFORGE_ERR_INTERNAL = -2 };

const char* qforge_last_error(void);

/* Bytes of a row of n elements of ggml type `type`; <0 if the type is unknown or n is not a
 * multiple of its block size. */
int64_t qforge_row_bytes(uint32_t type, int64_t n);

int qforge_can_dequantize(uint32_t type);
int qforge_can_quantize(uint32_t type);

/* src: qforge_row_bytes(type, n) bytes; dst: n floats. */
int qforge_dequantize_row(uint32_t type, const void* src, int64_t n, float* dst);

/* src: n floats; dst: qforge_row_bytes(type, n) bytes; importance: NULL or n floats. */
int qforge_quantize_row(uint32_t type, const float* src, int64_t n, void* dst,
                        const float* importance);

/* src: n_rows * n_per_row floats, quantized over the thread pool; importance NULL or n_per_row. */
int qforge_quantize_rows(uint32_t type, const float* src, int64_t n_rows, int64_t n_per_row,
                         void* dst, const float* importance);

/* *out = dot(dequantize(row), x) with n elements. */
int qforge_dot_row(uint32_t type, const void* row, int64_t n, const float* x, float* out);

#ifdef __cplusplus
}
#endif

#endif /* QFORGE_CAPI_QFORGE_C_H_ */
