// ldmc/frechet.h — the Fréchet distance between two sets of feature vectors, each summarised by its
// mean and covariance (the distance between the Gaussians of those moments):
//   FD = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr(sqrtm(S1 S2))
//   feature_moments     mean (d) and unbiased covariance (d, d) of n feature rows, in double
//   symmetric_eigen     eigenvalues and eigenvectors of a symmetric matrix (cyclic Jacobi rotations)
//   frechet_distance    the distance from two sets of moments
// tr(sqrtm(S1 S2)) is computed without the non-symmetric product: with R = sqrtm(S1) (symmetric,
// from S1's eigendecomposition), S1 S2 = R (R S2 R) R^-1 is similar to M = R S2 R, a symmetric
// positive semi-definite matrix, so the trace of the square root is the sum of sqrt(eigenvalues
// of M). Eigenvalues below zero (rounding, or a rank-deficient covariance at small n) count as 0.
// Everything in double: the features are float, but the differences of traces lose digits.
// Host code, O(d^3); d is the classifier's feature width (about 100), a few milliseconds.
#pragma once

#include <math.h>
#include <string.h>
#include "common.cuh"

// ----------------------------------------------------------------------------
// moments

// feats (n, d) row-major -> mu (d), cov (d, d) with the unbiased 1/(n - 1) (as numpy.cov); n >= 2
static inline void feature_moments(const float* feats, int n, int d, double* mu, double* cov) {
    memset(mu, 0, (size_t)d * sizeof(double));
    for (int i = 0; i < n; i++) {
        for (int k = 0; k < d; k++) mu[k] += feats[(size_t)i * d + k];
    }
    for (int k = 0; k < d; k++) mu[k] /= n;
    memset(cov, 0, (size_t)d * d * sizeof(double));
    double* centred = (double*)mallocCheck((size_t)d * sizeof(double));
    for (int i = 0; i < n; i++) {
        for (int k = 0; k < d; k++) centred[k] = feats[(size_t)i * d + k] - mu[k];
        for (int a = 0; a < d; a++) {
            for (int b = a; b < d; b++) cov[a * d + b] += centred[a] * centred[b];
        }
    }
    for (int a = 0; a < d; a++) {
        for (int b = a; b < d; b++) {
            cov[a * d + b] /= (n - 1);
            cov[b * d + a] = cov[a * d + b];
        }
    }
    free(centred);
}

// ----------------------------------------------------------------------------
// symmetric eigendecomposition

// a (d, d) symmetric, DESTROYED -> evals (d), evecs (d, d) with eigenvector j in column j, so that
// a = evecs diag(evals) evecs^T. Cyclic Jacobi: each rotation in the (p, q) plane zeroes a[p][q];
// sweeps over all pairs until the off-diagonal part is negligible against the whole matrix
// (quadratic convergence: about 6-10 sweeps at d = 100).
static inline void symmetric_eigen(double* a, int d, double* evals, double* evecs) {
    for (int i = 0; i < d; i++) {
        for (int j = 0; j < d; j++) evecs[i * d + j] = i == j ? 1.0 : 0.0;
    }
    double total = 0.0;
    for (int i = 0; i < d * d; i++) total += a[i] * a[i];
    for (int sweep = 0; sweep < 100; sweep++) {
        double off = 0.0;
        for (int p = 0; p < d; p++) {
            for (int q = p + 1; q < d; q++) off += a[p * d + q] * a[p * d + q];
        }
        if (off <= 1e-30 * total || off == 0.0) break;
        for (int p = 0; p < d; p++) {
            for (int q = p + 1; q < d; q++) {
                double apq = a[p * d + q];
                if (apq == 0.0) continue;
                // the rotation angle: t = tan(phi) is the smaller root of t^2 + 2 theta t - 1 = 0
                double theta = (a[q * d + q] - a[p * d + p]) / (2.0 * apq);
                double t = fabs(theta) > 1e150 ? 0.5 / theta
                                               : (theta >= 0 ? 1.0 : -1.0) / (fabs(theta) + sqrt(theta * theta + 1.0));
                double c = 1.0 / sqrt(t * t + 1.0), s = t * c;
                for (int k = 0; k < d; k++) {  // columns p, q: a J
                    double akp = a[k * d + p], akq = a[k * d + q];
                    a[k * d + p] = c * akp - s * akq;
                    a[k * d + q] = s * akp + c * akq;
                }
                for (int k = 0; k < d; k++) {  // rows p, q: J^T (a J)
                    double apk = a[p * d + k], aqk = a[q * d + k];
                    a[p * d + k] = c * apk - s * aqk;
                    a[q * d + k] = s * apk + c * aqk;
                }
                for (int k = 0; k < d; k++) {  // the eigenvectors accumulate the rotations: V J
                    double vkp = evecs[k * d + p], vkq = evecs[k * d + q];
                    evecs[k * d + p] = c * vkp - s * vkq;
                    evecs[k * d + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    for (int i = 0; i < d; i++) evals[i] = a[i * d + i];
}

// ----------------------------------------------------------------------------
// the distance

// the Fréchet distance between N(mu1, cov1) and N(mu2, cov2), all (d) / (d, d) in double
static inline double frechet_distance(const double* mu1, const double* cov1, const double* mu2, const double* cov2, int d) {
    size_t dd = (size_t)d * d;
    double* work = (double*)mallocCheck(dd * sizeof(double));
    double* evecs = (double*)mallocCheck(dd * sizeof(double));
    double* evals = (double*)mallocCheck((size_t)d * sizeof(double));
    double* root = (double*)mallocCheck(dd * sizeof(double));   // sqrtm(cov1)
    double* tmp = (double*)mallocCheck(dd * sizeof(double));

    // root = V diag(sqrt(max(e, 0))) V^T from cov1 = V diag(e) V^T
    memcpy(work, cov1, dd * sizeof(double));
    symmetric_eigen(work, d, evals, evecs);
    for (int i = 0; i < d; i++) {
        for (int j = 0; j < d; j++) {
            double s = 0.0;
            for (int k = 0; k < d; k++) s += evecs[i * d + k] * sqrt(fmax(evals[k], 0.0)) * evecs[j * d + k];
            root[i * d + j] = s;
        }
    }
    // work = root cov2 root, symmetrised against rounding
    for (int i = 0; i < d; i++) {
        for (int j = 0; j < d; j++) {
            double s = 0.0;
            for (int k = 0; k < d; k++) s += root[i * d + k] * cov2[k * d + j];
            tmp[i * d + j] = s;
        }
    }
    for (int i = 0; i < d; i++) {
        for (int j = 0; j < d; j++) {
            double s = 0.0;
            for (int k = 0; k < d; k++) s += tmp[i * d + k] * root[k * d + j];
            work[i * d + j] = s;
        }
    }
    for (int i = 0; i < d; i++) {
        for (int j = i + 1; j < d; j++) {
            double m = 0.5 * (work[i * d + j] + work[j * d + i]);
            work[i * d + j] = work[j * d + i] = m;
        }
    }
    symmetric_eigen(work, d, evals, evecs);
    double tr_sqrt = 0.0, tr1 = 0.0, tr2 = 0.0, dmu = 0.0;
    for (int i = 0; i < d; i++) {
        tr_sqrt += sqrt(fmax(evals[i], 0.0));
        tr1 += cov1[i * d + i];
        tr2 += cov2[i * d + i];
        dmu += (mu1[i] - mu2[i]) * (mu1[i] - mu2[i]);
    }
    free(work); free(evecs); free(evals); free(root); free(tmp);
    return dmu + tr1 + tr2 - 2.0 * tr_sqrt;
}
