// tests/test_eval.h — what eval_ldm measures with, against numbers PyTorch and numpy produced
// (dev/ref/eval.safetensors, written by dev/train_classifier.py with the committed classifier):
//   test_frechet()      host: feature_moments + frechet_distance against numpy's value (np.cov, eigh of
//                       sqrt(S1) S2 sqrt(S1)) for two 7-d feature sets (n = 50, 40), and for a pair with
//                       n = 5, 6 < d (singular covariances); relative error <= 1e-5 (the references are
//                       float32 numbers of a float64 computation)
//   test_classifier()   per device: the classifier's features and logits for 4 test images against a
//                       float64 PyTorch forward of the same weights, to 1e-4 of max|ref| (our float32
//                       convs sum in another order)
#pragma once

#include "ldmc/testing.h"
#include "ldmc/safetensors.h"
#include "ldmc/classifier.cuh"
#include "ldmc/frechet.h"

#define TEVAL_REF_PATH "dev/ref/eval.safetensors"
#define TEVAL_FD_RTOL 1e-5
#define TEVAL_RTOL 1e-4f

// ----------------------------------------------------------------------------
// the Fréchet distance

static void teval_frechet_case(const SafeTensors* ref, const char* tag, int n1, int n2, int d) {
    const float* a = ref_f32(ref, tag, "a", (size_t)n1 * d);
    const float* b = ref_f32(ref, tag, "b", (size_t)n2 * d);
    double want = ref_f32(ref, tag, "value", 1)[0];
    double mu1[16], mu2[16], cov1[256], cov2[256];
    feature_moments(a, n1, d, mu1, cov1);
    feature_moments(b, n2, d, mu2, cov2);
    double got = frechet_distance(mu1, cov1, mu2, cov2, d);
    double rel = fabs(got - want) / fabs(want);
    char name[96], detail[160];
    snprintf(name, sizeof(name), "Frechet distance %s (n %d, %d; d %d)", tag, n1, n2, d);
    snprintf(detail, sizeof(detail), "got %.7g numpy %.7g: relative err %.2e tol %.0e", got, want, rel, TEVAL_FD_RTOL);
    check_true(name, isfinite(got) && rel <= TEVAL_FD_RTOL, detail);
}

static void test_frechet(void) {
    SafeTensors ref;
    safetensors_load(TEVAL_REF_PATH, &ref);
    teval_frechet_case(&ref, "fd", 50, 40, 7);
    teval_frechet_case(&ref, "fd_singular", 5, 6, 7);
    // the same set twice: exactly the same moments, a distance of 0 up to rounding
    const float* a = ref_f32(&ref, "fd", "a", 50 * 7);
    double mu[7], cov[49];
    feature_moments(a, 50, 7, mu, cov);
    double self = frechet_distance(mu, cov, mu, cov, 7);
    double tr = 0.0;
    for (int i = 0; i < 7; i++) tr += cov[i * 7 + i];
    char detail[128];
    snprintf(detail, sizeof(detail), "|FD| %.2e tol 1e-9 x tr(S) %.2e", fabs(self), tr);
    check_true("Frechet distance of a set with itself", fabs(self) <= 1e-9 * tr, detail);
    safetensors_free(&ref);
}

// ----------------------------------------------------------------------------
// the classifier

static void test_classifier(void) {
    SafeTensors ref;
    safetensors_load(TEVAL_REF_PATH, &ref);
    const int B = 4;
    Classifier c;
    classifier_load(&c, CLASSIFIER_DEFAULT_PATH, B);
    int D = c.feature_dim;
    float* x = test_upload(safetensors_get_f32(&ref, "x", (size_t)B * 3 * 32 * 32), (size_t)B * 3 * 32 * 32);
    float* feats = (float*)mallocCheck((size_t)B * D * sizeof(float));
    float logits[4 * CLASSIFIER_CLASSES];
    classifier_forward(&c, x, B, feats, logits);
    check_close("classifier features (4 test images)", feats, safetensors_get_f32(&ref, "features", (size_t)B * D),
                (size_t)B * D, TEVAL_RTOL);
    check_close("classifier logits (4 test images)", logits,
                safetensors_get_f32(&ref, "logits", (size_t)B * CLASSIFIER_CLASSES), (size_t)B * CLASSIFIER_CLASSES,
                TEVAL_RTOL);
    free(feats);
    dev_free(x);
    classifier_free(&c);
    safetensors_free(&ref);
}
