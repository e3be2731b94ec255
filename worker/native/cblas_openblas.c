/* Forwards the three CBLAS products MLX's CPU backend calls to OpenBLAS.
 *
 * The OpenBLAS from the scipy-openblas32 wheel exports its CBLAS under a
 * "scipy_" prefix (32-bit integers, like MLX's calls). Loading this library
 * with RTLD_GLOBAL before mlx.core is imported makes libmlx.so resolve
 * cblas_sgemm/dgemm/cgemm here instead of in its bundled reference BLAS.
 */
#include <stdint.h>

typedef int blasint;

extern void scipy_cblas_sgemm(int order, int ta, int tb, blasint m, blasint n, blasint k,
                              float alpha, const float *a, blasint lda, const float *b,
                              blasint ldb, float beta, float *c, blasint ldc);
extern void scipy_cblas_dgemm(int order, int ta, int tb, blasint m, blasint n, blasint k,
                              double alpha, const double *a, blasint lda, const double *b,
                              blasint ldb, double beta, double *c, blasint ldc);
extern void scipy_cblas_cgemm(int order, int ta, int tb, blasint m, blasint n, blasint k,
                              const void *alpha, const void *a, blasint lda, const void *b,
                              blasint ldb, const void *beta, void *c, blasint ldc);

void cblas_sgemm(int order, int ta, int tb, blasint m, blasint n, blasint k, float alpha,
                 const float *a, blasint lda, const float *b, blasint ldb, float beta,
                 float *c, blasint ldc) {
  scipy_cblas_sgemm(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void cblas_dgemm(int order, int ta, int tb, blasint m, blasint n, blasint k, double alpha,
                 const double *a, blasint lda, const double *b, blasint ldb, double beta,
                 double *c, blasint ldc) {
  scipy_cblas_dgemm(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void cblas_cgemm(int order, int ta, int tb, blasint m, blasint n, blasint k,
                 const void *alpha, const void *a, blasint lda, const void *b, blasint ldb,
                 const void *beta, void *c, blasint ldc) {
  scipy_cblas_cgemm(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

/* Lets the worker confirm which library answered. */
const char *loraboard_blas_name(void) { return "OpenBLAS (scipy-openblas32)"; }
