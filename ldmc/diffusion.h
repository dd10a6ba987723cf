// ldmc/diffusion.h — the diffusion process of SPEC §5 and the samplers train_ldm (previews) and
// sample_ldm share:
//   diffusion_schedule   abar_t for t = 0..T-1 (cosine or linear betas), in double precision
//   diffusion_q_sample   z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps, the training input
//   sample_latents       DDPM (ancestral), DDIM (eta) and DPM-Solver++(2M) over S respaced steps,
//                        calling a model callback for eps (the callback does CFG and batching)
//   DDPM_X0_CLIP         the bound on DDPM's x0 prediction (below: why DDPM needs one)
// Latents are tiny (B x 4 x 8 x 8), so the sampler arithmetic runs on the host in double; only the
// U-Net forward, behind the callback, runs on the device.
#pragma once

#include "common.cuh"
#include "rng.cuh"

#define DIFFUSION_T 1000

// DDPM clamps its x0 prediction to [-DDPM_X0_CLIP, DDPM_X0_CLIP]. Why: near t = T the cosine schedule's
// abar is tiny (abar_999 = 2.4e-9), and x0 = (z - sqrt(1 - abar_t) eps) / sqrt(abar_t) turns an eps error
// e into an x0 error ~2e4 e. The ancestral step 999 -> 998 weights x0 by sqrt(abar_998) beta / (1 -
// abar_999) = 1.6e-3, so e reaches z_998 times 32 (times 1.5 on the step from 998, 0.8 from 997, then
// < 0.6): an eps error of 0.1 puts a 3-sigma error into a latent the model expects at unit variance, and
// the 998 steps after it never recover (a third of the pixels of a 1,000-step sample saturated).
// Clamped, the first step adds at most 1.6e-3 * DDPM_X0_CLIP (0.02) to z_998. The bound is the range
// the data occupy, so that it never cuts a real latent: z0 = mu * latent_scale has unit std over all
// values, but not per channel (the quick-start VAE's channels: std 0.48, 0.22, 1.93, 0.07), so the
// widest channel reaches far out: max |z0| 11.1 over its 100,000 training latents, 3.5e-3 of the values
// beyond 5, 4e-7 beyond 10. 12 is the round number above that; any bound well under 2e4 e stops the
// divergence. A constant, not a per-model measured range, because that would need a new checkpoint
// field; train_ldm logs max |z0| of its training latents and the fraction beyond the bound, and warns
// when it exceeds 0.1%. DDIM and DPM-Solver++ do not clip (SPEC section 5): their first step at the
// step counts they are run with, from t = 980 (50 steps) or 950 (20), passes an eps error on with gain
// ~1.05, not 32. (At 1,000 steps DDIM would have DDPM's problem.)
#define DDPM_X0_CLIP 12.0

typedef enum { SCHEDULE_COSINE, SCHEDULE_LINEAR } Schedule;
typedef enum { SAMPLER_DDPM, SAMPLER_DDIM, SAMPLER_DPMPP_2M } Sampler;

static const char* schedule_name(Schedule s) { return s == SCHEDULE_COSINE ? "cosine" : "linear"; }
static inline const char* sampler_name(Sampler s) {
    return s == SAMPLER_DDPM ? "ddpm" : s == SAMPLER_DDIM ? "ddim" : "dpm++2m";
}

// ----------------------------------------------------------------------------
// noise schedule

// abar (T): abar_t = prod_{i <= t} (1 - beta_i).
// cosine (Nichol & Dhariwal): beta_t = 1 - f((t+1)/T) / f(t/T), f(u) = cos((u + s)/(1 + s) * pi/2)^2,
// s = 0.008, clipped at 0.999; linear: beta from 1e-4 to 0.02.
static inline void diffusion_schedule(Schedule s, double* abar) {
    double prod = 1.0;
    for (int t = 0; t < DIFFUSION_T; t++) {
        double beta;
        if (s == SCHEDULE_COSINE) {
            const double so = 0.008, half_pi = 1.5707963267948966;
            double f0 = cos(((double)t / DIFFUSION_T + so) / (1.0 + so) * half_pi);
            double f1 = cos(((double)(t + 1) / DIFFUSION_T + so) / (1.0 + so) * half_pi);
            beta = 1.0 - (f1 * f1) / (f0 * f0);
            if (beta > 0.999) beta = 0.999;
        } else {
            beta = 1e-4 + (0.02 - 1e-4) * t / (DIFFUSION_T - 1);
        }
        prod *= 1.0 - beta;
        abar[t] = prod;
    }
}

// z_t (B, dim) = sqrt(abar_t[b]) z0 + sqrt(1 - abar_t[b]) eps, per batch item (host)
static inline void diffusion_q_sample(float* zt, const float* z0, const float* eps, const int* t, const double* abar,
                               int B, size_t dim) {
    for (int b = 0; b < B; b++) {
        double a = abar[t[b]], sa = sqrt(a), sn = sqrt(1.0 - a);
        for (size_t i = 0; i < dim; i++) {
            size_t k = (size_t)b * dim + i;
            zt[k] = (float)(sa * z0[k] + sn * eps[k]);
        }
    }
}

// ----------------------------------------------------------------------------
// samplers

// eps prediction of the model at timestep t for n latents z (n, dim), host in and out
typedef void (*EpsModelFn)(void* ctx, const float* z, int t, float* eps, int n);

// respaced timesteps: tau_i = i * floor(T / S), i = 0..S-1 (visited from the largest down)
static int sampling_timestep(int i, int steps) { return i * (DIFFUSION_T / steps); }

// the per-step noise: the caller's fixed values, or the counter-based RNG
static inline double step_noise_at(const float* fixed, uint64_t seed, uint64_t index) {
    return fixed ? (double)fixed[index] : (double)rng_normal(seed, index);
}

// One sampler run: z (n, dim) holds the initial noise z_T on entry and the sample on exit.
// Each step goes from t = tau_i to s = tau_{i-1}; the last from t = 0 to abar_s = 1, whose result is
// the x0 prediction. Per-step noise (DDPM, DDIM with eta > 0) is rng_normal(noise_seed, counter) with
// counter = step_index * n * dim + element, so a run is reproducible on any device; tests pass their
// own in step_noise (steps, n, dim) instead. trace (steps, n, dim), when not NULL, receives z after
// every step.
static inline void sample_latents(Sampler sampler, int steps, float eta, const double* abar, EpsModelFn model,
                           void* ctx, float* z, int n, size_t dim, uint64_t noise_seed,
                           const float* step_noise, float* trace) {
    size_t N = (size_t)n * dim;
    float* eps = (float*)mallocCheck(N * sizeof(float));
    double* x0 = (double*)mallocCheck(N * sizeof(double));       // current data prediction
    double* x0_prev = (double*)calloc(N, sizeof(double));          // DPM-Solver++: the previous one
    if (x0_prev == NULL) { fprintf(stderr, "Error: out of memory in sample_latents\n"); exit(EXIT_FAILURE); }
    double h_prev = 0.0;
    for (int i = steps - 1; i >= 0; i--) {
        int t = sampling_timestep(i, steps);
        double a_t = abar[t];
        double a_s = i > 0 ? abar[sampling_timestep(i - 1, steps)] : 1.0;
        int last = i == 0;
        model(ctx, z, t, eps, n);
        for (size_t k = 0; k < N; k++) x0[k] = (z[k] - sqrt(1.0 - a_t) * eps[k]) / sqrt(a_t);
        uint64_t noise_base = (uint64_t)(steps - 1 - i) * N;
        if (sampler == SAMPLER_DDPM) {
            // posterior q(z_s | z_t, x0): mean = c0 x0 + ct z_t, variance = (1 - a_s)/(1 - a_t) * beta,
            // with x0 clamped to +-DDPM_X0_CLIP (see there); on the last step c0 = 1, ct = 0: the sample
            // is the clamped x0
            for (size_t k = 0; k < N; k++) x0[k] = fmin(fmax(x0[k], -DDPM_X0_CLIP), DDPM_X0_CLIP);
            double beta = 1.0 - a_t / a_s;
            double c0 = sqrt(a_s) * beta / (1.0 - a_t);
            double ct = sqrt(1.0 - beta) * (1.0 - a_s) / (1.0 - a_t);
            double sd = last ? 0.0 : sqrt((1.0 - a_s) / (1.0 - a_t) * beta);
            for (size_t k = 0; k < N; k++) {
                double noise = sd > 0.0 ? step_noise_at(step_noise, noise_seed, noise_base + k) : 0.0;
                z[k] = (float)(c0 * x0[k] + ct * z[k] + sd * noise);
            }
        } else if (sampler == SAMPLER_DDIM) {
            // Song et al.: sigma = eta sqrt((1 - a_s)/(1 - a_t)) sqrt(1 - a_t/a_s);
            // z_s = sqrt(a_s) x0 + sqrt(1 - a_s - sigma^2) eps + sigma noise
            double sigma = eta * sqrt((1.0 - a_s) / (1.0 - a_t)) * sqrt(1.0 - a_t / a_s);
            double c_eps = sqrt(fmax(1.0 - a_s - sigma * sigma, 0.0));
            for (size_t k = 0; k < N; k++) {
                double noise = sigma > 0.0 ? step_noise_at(step_noise, noise_seed, noise_base + k) : 0.0;
                z[k] = (float)(sqrt(a_s) * x0[k] + c_eps * eps[k] + sigma * noise);
            }
        } else {
            // DPM-Solver++(2M), data prediction: lambda = log(alpha / sigma), h = lambda_s - lambda_t,
            // z_s = (sigma_s / sigma_t) z_t - alpha_s (exp(-h) - 1) D, with D = x0 (first order: first
            // and last step) or D = (1 + 1/(2r)) x0 - 1/(2r) x0_prev, r = h_prev / h (second order)
            if (last) {
                for (size_t k = 0; k < N; k++) z[k] = (float)x0[k];  // sigma_s = 0: the data prediction
            } else {
                double lam_t = 0.5 * log(a_t / (1.0 - a_t)), lam_s = 0.5 * log(a_s / (1.0 - a_s));
                double h = lam_s - lam_t;
                double ratio = sqrt((1.0 - a_s) / (1.0 - a_t)), alpha_s = sqrt(a_s);
                double em1 = expm1(-h);
                int first = i == steps - 1;
                double c_cur = 1.0, c_prev = 0.0;
                if (!first) {
                    double r = h_prev / h;
                    c_cur = 1.0 + 1.0 / (2.0 * r);
                    c_prev = -1.0 / (2.0 * r);
                }
                for (size_t k = 0; k < N; k++) {
                    double D = first ? x0[k] : c_cur * x0[k] + c_prev * x0_prev[k];
                    z[k] = (float)(ratio * z[k] - alpha_s * em1 * D);
                }
                h_prev = h;
            }
            double* tmp = x0_prev; x0_prev = x0; x0 = tmp;
        }
        if (trace) memcpy(trace + (size_t)(steps - 1 - i) * N, z, N * sizeof(float));
    }
    free(eps); free(x0); free(x0_prev);
}
