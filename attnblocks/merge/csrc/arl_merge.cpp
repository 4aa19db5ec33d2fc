// Fused ARL merge for CPU: float32 tensors, NCHW-contiguous (layout 0) or channels_last (layout 1).
//
//   y = act(s + d * (F + alpha * N(F) * s)),  F = fma(t, fk, fb),  s = fma(u, sk, sb)  (per channel)
//
// N is the spatial softmax (over H*W of each (n, c) plane) or the sigmoid; act is ReLU or the
// identity; d is the per-sample stochastic-depth factor. The per-channel affine maps are the block's
// last BatchNorm and the shortcut projection's BatchNorm (identity when the pointers are null), so
// F and s are never written to memory. Each (n, c) plane is small enough to stay in cache while it
// is read more than once. Backward recomputes F, s and N(F) from t and u (nothing else is saved),
// and folds in the BatchNorm backward of both norms.
//
// Channels_last tensors are walked row by row (one position, all channels): the inner loops run over
// the contiguous channels, and the per-plane reductions are kept per channel.
//
// Plain C ABI (loaded with ctypes), no PyTorch headers; the loops vectorise with -O3 and OpenMP simd.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

typedef int64_t i64;

namespace {

// exp(x) to about 1 ulp (Cephes' single-precision polynomial), written so that the compiler
// vectorises it: no branches, no library call. Underflows to 0 below -87.3, saturates above 88.4;
// NaN propagates.
inline float exp_f32(float x) {
    const float hi = 88.3762626647949f, lo = -87.3365478515625f;
    const float below = x < lo ? 0.0f : 1.0f;
    x = x > hi ? hi : x;
    x = x < lo ? lo : x;
    // explicit fma: the library is built with -ffp-contract=off, and this chain is the hot path
    float fx = std::floor(std::fma(x, 1.44269504088896341f, 0.5f));
    x = std::fma(-fx, 0.693359375f, x);
    x = std::fma(fx, 2.12194440e-4f, x);
    const float z = x * x;
    float p = 1.9875691500e-4f;
    p = std::fma(p, x, 1.3981999507e-3f);
    p = std::fma(p, x, 8.3334519073e-3f);
    p = std::fma(p, x, 4.1665795894e-2f);
    p = std::fma(p, x, 1.6666665459e-1f);
    p = std::fma(p, x, 5.0000001201e-1f);
    p = std::fma(p, z, x) + 1.0f;
    const int32_t bits = (static_cast<int32_t>(fx) + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof(scale));
    return p * scale * below;
}

inline float sigmoid_f32(float x) { return 1.0f / (1.0f + exp_f32(-x)); }

inline float at(const float* p, i64 i, float dflt) { return p ? p[i] : dflt; }

// e[i] = exp(t[i] * k + b - m); returns the sum of e.
inline float exp_plane(const float* t, float k, float b, float m, float* e, i64 hw) {
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (i64 i = 0; i < hw; ++i) {
        const float v = exp_f32(std::fma(t[i], k, b) - m);
        e[i] = v;
        sum += v;
    }
    return sum;
}

// Spatial softmax of one plane, F = fma(t, k, b): writes e = exp(F - m) and returns 1 / sum(e), so
// that softmax(F) = e * inv for any shift m. m = 0 first (one pass fewer): exact unless some exp(F)
// saturates or all of them underflow, which the sum shows; then m = max(F) as usual. Deterministic,
// so backward recomputes exactly what forward used.
inline float softmax_exp(const float* t, float k, float b, float* e, i64 hw) {
    float sum = exp_plane(t, k, b, 0.0f, e, hw);
    if (!(sum >= 1e-30f && sum <= 1e30f)) {
        float m = -INFINITY;
#pragma omp simd reduction(max : m)
        for (i64 i = 0; i < hw; ++i) m = std::max(m, std::fma(t[i], k, b));
        sum = exp_plane(t, k, b, m, e, hw);
    }
    return 1.0f / sum;
}

// Train-mode BatchNorm backward of channel c, in place over the output gradient g (N planes):
// dx = k * (g - mean(g) - xhat * mean(g * xhat)), from sum(g) and sum(g * (x - mean)).
inline void bn_train_backward(float* g, const float* x, i64 N, i64 C, i64 HW, i64 c, float k,
                              float mu, float invstd, double sum, double sumx) {
    const double count = static_cast<double>(N) * static_cast<double>(HW);
    const float m1 = static_cast<float>(sum / count);
    const float m2 = static_cast<float>(sumx / count) * invstd * invstd;
    for (i64 n = 0; n < N; ++n) {
        float* gp = g + (n * C + c) * HW;
        const float* xp = x + (n * C + c) * HW;
#pragma omp simd
        for (i64 i = 0; i < HW; ++i) gp[i] = k * (gp[i] - m1 - (xp[i] - mu) * m2);
    }
}


// Per-channel batch statistics over (N, H*W) as PyTorch's CPU BatchNorm computes them: the mean
// (sum in double, rounded to float), the sum of squared deviations (squares of the float
// deviations summed in double, rounded to float) and 1 / sqrt(var_sum / count + eps) (the division
// in float, the rest in double, rounded to float).
void channel_stats_nchw(const float* x, i64 N, i64 C, i64 HW, double eps, float* mean,
                      float* var_sum, float* invstd, int nt) {
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
    for (i64 c = 0; c < C; ++c) {
        double s = 0.0;
        for (i64 n = 0; n < N; ++n) {
            const float* p = x + (n * C + c) * HW;
            double acc = 0.0;
#pragma omp simd reduction(+ : acc)
            for (i64 i = 0; i < HW; ++i) acc += p[i];
            s += acc;
        }
        const double count = static_cast<double>(N) * static_cast<double>(HW);
        const float mu = static_cast<float>(s / count);
        double q = 0.0;
        for (i64 n = 0; n < N; ++n) {
            const float* p = x + (n * C + c) * HW;
            double acc = 0.0;
#pragma omp simd reduction(+ : acc)
            for (i64 i = 0; i < HW; ++i) {
                const float dv = p[i] - mu;
                acc += static_cast<double>(dv * dv);
            }
            q += acc;
        }
        const float v = static_cast<float>(q) / static_cast<float>(count);
        mean[c] = mu;
        var_sum[c] = static_cast<float>(q);
        invstd[c] = static_cast<float>(1.0 / std::sqrt(static_cast<double>(v) + eps));
    }
}

// Forward. norm: 0 spatial softmax, 1 sigmoid; fk, fb, sk, sb: per-channel affine maps (nullable:
// identity); dscale: per-sample factor (nullable: 1).
void merge_fwd_nchw(const float* t, const float* u, float* y, i64 N, i64 C, i64 HW,
                  const float* fk, const float* fb, const float* sk, const float* sb, float alpha,
                  const float* dscale, int norm, int relu, int nt) {
#pragma omp parallel for collapse(2) num_threads(nt) if (nt > 1) schedule(static)
    for (i64 n = 0; n < N; ++n)
    for (i64 c = 0; c < C; ++c) {
        const i64 p = n * C + c;
        const float kf = at(fk, c, 1.0f), bf = at(fb, c, 0.0f);
        const float ks = at(sk, c, 1.0f), bs = at(sb, c, 0.0f);
        const float d = at(dscale, n, 1.0f);
        const float* tp = t + p * HW;
        const float* up = u + p * HW;
        float* yp = y + p * HW;
        if (norm == 0) {
            const float inv = softmax_exp(tp, kf, bf, yp, HW);
            const float ai = alpha * inv;
#pragma omp simd
            for (i64 i = 0; i < HW; ++i) {
                const float f = std::fma(tp[i], kf, bf);
                const float s = std::fma(up[i], ks, bs);
                const float z = s + d * (f + ai * yp[i] * s);
                yp[i] = relu ? (z < 0.0f ? 0.0f : z) : z;
            }
        } else {
#pragma omp simd
            for (i64 i = 0; i < HW; ++i) {
                const float f = std::fma(tp[i], kf, bf);
                const float s = std::fma(up[i], ks, bs);
                const float z = s + d * (f + alpha * sigmoid_f32(f) * s);
                yp[i] = relu ? (z < 0.0f ? 0.0f : z) : z;
            }
        }
    }
}

// Backward. Writes into gf the gradient wrt t and into gs the gradient wrt u. *_mode: 0 no norm
// (the tensor is F or s itself), 1 norm with fixed statistics (eval), 2 norm with batch statistics
// (train). mean/invstd: the statistics the forward used (modes 1 and 2). Per-channel outputs
// (double, C each): sum of dL/dF, sum of dL/dF * (t - mean), the same for s, and the channel's
// share of dL/dalpha. need_*: whether gf / gs must hold the input gradient (else scratch).
void merge_bwd_nchw(const float* dy, const float* y, const float* t, const float* u, i64 N, i64 C,
                  i64 HW, const float* fk, const float* fb, const float* sk, const float* sb,
                  float alpha, const float* dscale, int norm, float* gf, float* gs, int f_mode,
                  const float* f_mean, const float* f_invstd, int f_need, int s_mode,
                  const float* s_mean, const float* s_invstd, int s_need, double* f_sum,
                  double* f_sumx, double* s_sum, double* s_sumx, double* a_sum, int nt) {
    const bool relu = y != nullptr;
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
    for (i64 c = 0; c < C; ++c) {
        const float kf = at(fk, c, 1.0f), bf = at(fb, c, 0.0f);
        const float ks = at(sk, c, 1.0f), bs = at(sb, c, 0.0f);
        const float fmu = at(f_mean, c, 0.0f), smu = at(s_mean, c, 0.0f);
        // eval-mode norms: the input gradient is the output gradient times the scale
        const float fout = f_mode == 1 ? kf : 1.0f, sout = s_mode == 1 ? ks : 1.0f;
        double fs = 0.0, fsx = 0.0, ss = 0.0, ssx = 0.0, as = 0.0;
        for (i64 n = 0; n < N; ++n) {
            const i64 off = (n * C + c) * HW;
            const float d = at(dscale, n, 1.0f);
            const float* dyp = dy + off;
            // ReLU: the gradient passes where y > 0 (y is read in place of dy without one)
            const float* yp = y ? y + off : dy + off;
            const float* tp = t + off;
            const float* up = u + off;
            float* gfp = gf + off;
            float* gsp = gs + off;
            float pfs = 0.0f, pfsx = 0.0f, pss = 0.0f, pssx = 0.0f;
            if (norm == 0) {
                const float inv = softmax_exp(tp, kf, bf, gfp, HW);
                float r = 0.0f;
#pragma omp simd reduction(+ : r)
                for (i64 i = 0; i < HW; ++i) {
                    const float g = (relu && !(yp[i] > 0.0f)) ? 0.0f : dyp[i];
                    const float a = gfp[i] * inv;
                    gfp[i] = a;
                    gsp[i] = g;
                    r += g * std::fma(up[i], ks, bs) * a;
                }
                r *= d;  // sum(d * g * s * A): dL/dalpha, and the softmax's vjp term
                as += r;
#pragma omp simd reduction(+ : pfs, pfsx, pss, pssx)
                for (i64 i = 0; i < HW; ++i) {
                    const float a = gfp[i], g = gsp[i];
                    const float s = std::fma(up[i], ks, bs);
                    const float gb = d * g;
                    const float df = gb + alpha * a * (gb * s - r);
                    const float ds = g + alpha * gb * a;
                    pfs += df;
                    pfsx += df * (tp[i] - fmu);
                    pss += ds;
                    pssx += ds * (up[i] - smu);
                    gfp[i] = df * fout;
                    gsp[i] = ds * sout;
                }
            } else {
                float r = 0.0f;
#pragma omp simd reduction(+ : r, pfs, pfsx, pss, pssx)
                for (i64 i = 0; i < HW; ++i) {
                    const float g = (relu && !(yp[i] > 0.0f)) ? 0.0f : dyp[i];
                    const float f = std::fma(tp[i], kf, bf);
                    const float a = sigmoid_f32(f);
                    const float s = std::fma(up[i], ks, bs);
                    const float gb = d * g;
                    const float q = gb * s * a;
                    r += q;
                    const float df = gb + alpha * q * (1.0f - a);
                    const float ds = g + alpha * gb * a;
                    pfs += df;
                    pfsx += df * (tp[i] - fmu);
                    pss += ds;
                    pssx += ds * (up[i] - smu);
                    gfp[i] = df * fout;
                    gsp[i] = ds * sout;
                }
                as += r;
            }
            fs += pfs;
            fsx += pfsx;
            ss += pss;
            ssx += pssx;
        }
        f_sum[c] = fs;
        f_sumx[c] = fsx;
        s_sum[c] = ss;
        s_sumx[c] = ssx;
        a_sum[c] = as;
        if (f_mode == 2 && f_need) {
            bn_train_backward(gf, t, N, C, HW, c, kf, fmu, f_invstd[c], fs, fsx);
        }
        if (s_mode == 2 && s_need) {
            bn_train_backward(gs, u, N, C, HW, c, ks, smu, s_invstd[c], ss, ssx);
        }
    }
}


// Channels_last kernels walk each sample's (H*W, C) matrix row by row, so that every pass streams
// through memory; the per-channel reductions are kept in arrays of C values. Work is split by sample
// (forward) or by sample with per-thread partial sums added in thread order (backward, statistics),
// so that a given thread count always gives the same result.

// Per-channel affine maps as arrays (identity where the pointers are null).
void affine_arrays(const float* k, const float* b, i64 C, std::vector<float>& ko,
                   std::vector<float>& bo) {
    ko.resize(C);
    bo.resize(C);
    for (i64 c = 0; c < C; ++c) {
        ko[c] = at(k, c, 1.0f);
        bo[c] = at(b, c, 0.0f);
    }
}

int thread_count(int nt, i64 work) { return static_cast<int>(std::max<i64>(1, std::min<i64>(nt, work))); }

// Channels_last batch statistics: the same sums as channel_stats_nchw, row by row over (N*H*W, C).
void channel_stats_nhwc(const float* x, i64 N, i64 C, i64 HW, double eps, float* mean,
                        float* var_sum, float* invstd, int nt) {
    const i64 rows = N * HW;
    const double count = static_cast<double>(rows);
    const int T = thread_count(nt, rows);
    std::vector<double> part(static_cast<size_t>(T) * C);
    std::vector<float> mu(C);
    for (int pass = 0; pass < 2; ++pass) {
        std::fill(part.begin(), part.end(), 0.0);
#pragma omp parallel num_threads(T) if (T > 1)
        {
            int tid = 0;
#ifdef _OPENMP
            tid = omp_get_thread_num();
#endif
            double* acc = part.data() + static_cast<size_t>(tid) * C;
            const i64 lo = rows * tid / T, hi = rows * (tid + 1) / T;
            for (i64 p = lo; p < hi; ++p) {
                const float* xp = x + p * C;
                if (pass == 0) {
#pragma omp simd
                    for (i64 c = 0; c < C; ++c) acc[c] += xp[c];
                } else {
#pragma omp simd
                    for (i64 c = 0; c < C; ++c) {
                        const float dv = xp[c] - mu[c];
                        acc[c] += static_cast<double>(dv * dv);
                    }
                }
            }
        }
        for (i64 c = 0; c < C; ++c) {
            double total = 0.0;
            for (int t = 0; t < T; ++t) total += part[static_cast<size_t>(t) * C + c];
            if (pass == 0) {
                mu[c] = static_cast<float>(total / count);
            } else {
                const float v = static_cast<float>(total) / static_cast<float>(count);
                mean[c] = mu[c];
                var_sum[c] = static_cast<float>(total);
                invstd[c] = static_cast<float>(1.0 / std::sqrt(static_cast<double>(v) + eps));
            }
        }
    }
}

// Spatial softmax of one sample (channels_last): e[p, c] = exp(F - m_c), inv[c] = 1 / sum_p e[p, c];
// m_c = 0 unless some exp saturates or all underflow in channel c (as softmax_exp).
void softmax_exp_nhwc(const float* t, const float* k, const float* b, float* e, i64 HW, i64 C,
                      float* inv, float* m) {
    std::fill(inv, inv + C, 0.0f);
    for (i64 p = 0; p < HW; ++p) {
        const float* tp = t + p * C;
        float* ep = e + p * C;
#pragma omp simd
        for (i64 c = 0; c < C; ++c) {
            const float v = exp_f32(std::fma(tp[c], k[c], b[c]));
            ep[c] = v;
            inv[c] += v;
        }
    }
    bool redo = false;
    for (i64 c = 0; c < C; ++c) redo |= !(inv[c] >= 1e-30f && inv[c] <= 1e30f);
    if (redo) {  // all channels again, shifted by their maxima
        std::fill(m, m + C, -INFINITY);
        for (i64 p = 0; p < HW; ++p)
            for (i64 c = 0; c < C; ++c) m[c] = std::max(m[c], std::fma(t[p * C + c], k[c], b[c]));
        std::fill(inv, inv + C, 0.0f);
        for (i64 p = 0; p < HW; ++p) {
            const float* tp = t + p * C;
            float* ep = e + p * C;
#pragma omp simd
            for (i64 c = 0; c < C; ++c) {
                const float v = exp_f32(std::fma(tp[c], k[c], b[c]) - m[c]);
                ep[c] = v;
                inv[c] += v;
            }
        }
    }
    for (i64 c = 0; c < C; ++c) inv[c] = 1.0f / inv[c];
}

void merge_fwd_nhwc(const float* t, const float* u, float* y, i64 N, i64 C, i64 HW,
                    const float* fk, const float* fb, const float* sk, const float* sb, float alpha,
                    const float* dscale, int norm, int relu, int nt) {
    std::vector<float> kf, bf, ks, bs;
    affine_arrays(fk, fb, C, kf, bf);
    affine_arrays(sk, sb, C, ks, bs);
    const int T = thread_count(nt, N);
#pragma omp parallel num_threads(T) if (T > 1)
    {
        std::vector<float> ai(C, 0.0f), m(C);
#pragma omp for schedule(static)
        for (i64 n = 0; n < N; ++n) {
            const float d = at(dscale, n, 1.0f);
            const i64 off = n * HW * C;
            if (norm == 0) {
                softmax_exp_nhwc(t + off, kf.data(), bf.data(), y + off, HW, C, ai.data(), m.data());
                for (i64 c = 0; c < C; ++c) ai[c] *= alpha;
            }
            for (i64 p = 0; p < HW; ++p) {
                const float* tp = t + off + p * C;
                const float* up = u + off + p * C;
                float* yp = y + off + p * C;
                if (norm == 0) {  // one loop per normalization: no exp computed and thrown away
#pragma omp simd
                    for (i64 c = 0; c < C; ++c) {
                        const float f = std::fma(tp[c], kf[c], bf[c]);
                        const float s = std::fma(up[c], ks[c], bs[c]);
                        const float z = s + d * (f + ai[c] * yp[c] * s);
                        yp[c] = relu ? (z < 0.0f ? 0.0f : z) : z;
                    }
                } else {
#pragma omp simd
                    for (i64 c = 0; c < C; ++c) {
                        const float f = std::fma(tp[c], kf[c], bf[c]);
                        const float s = std::fma(up[c], ks[c], bs[c]);
                        const float z = s + d * (f + alpha * sigmoid_f32(f) * s);
                        yp[c] = relu ? (z < 0.0f ? 0.0f : z) : z;
                    }
                }
            }
        }
    }
}

// Train-mode BatchNorm backward (channels_last), in place over g, row by row.
void bn_train_backward_nhwc(float* g, const float* x, i64 N, i64 C, i64 HW, const float* k,
                            const float* mu, const float* invstd, const double* sum,
                            const double* sumx, int nt) {
    const double count = static_cast<double>(N) * static_cast<double>(HW);
    std::vector<float> m1(C), m2(C);
    for (i64 c = 0; c < C; ++c) {
        m1[c] = static_cast<float>(sum[c] / count);
        m2[c] = static_cast<float>(sumx[c] / count) * invstd[c] * invstd[c];
    }
    const i64 rows = N * HW;
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
    for (i64 p = 0; p < rows; ++p) {
        float* gp = g + p * C;
        const float* xp = x + p * C;
#pragma omp simd
        for (i64 c = 0; c < C; ++c) gp[c] = k[c] * (gp[c] - m1[c] - (xp[c] - mu[c]) * m2[c]);
    }
}

void merge_bwd_nhwc(const float* dy, const float* y, const float* t, const float* u, i64 N, i64 C,
                    i64 HW, const float* fk, const float* fb, const float* sk, const float* sb,
                    float alpha, const float* dscale, int norm, float* gf, float* gs, int f_mode,
                    const float* f_mean, const float* f_invstd, int f_need, int s_mode,
                    const float* s_mean, const float* s_invstd, int s_need, double* f_sum,
                    double* f_sumx, double* s_sum, double* s_sumx, double* a_sum, int nt) {
    const bool relu = y != nullptr;
    std::vector<float> kf, bf, ks, bs;
    affine_arrays(fk, fb, C, kf, bf);
    affine_arrays(sk, sb, C, ks, bs);
    std::vector<float> fmu(C), smu(C), fout(C), sout(C);
    for (i64 c = 0; c < C; ++c) {
        fmu[c] = at(f_mean, c, 0.0f);
        smu[c] = at(s_mean, c, 0.0f);
        fout[c] = f_mode == 1 ? kf[c] : 1.0f;
        sout[c] = s_mode == 1 ? ks[c] : 1.0f;
    }
    const int T = thread_count(nt, N);
    std::vector<double> part(static_cast<size_t>(T) * 5 * C, 0.0);  // per thread: 5 sums of C
#pragma omp parallel num_threads(T) if (T > 1)
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        double* acc = part.data() + static_cast<size_t>(tid) * 5 * C;
        std::vector<float> inv(C), m(C), r(C), pfs(C), pfsx(C), pss(C), pssx(C);
        const i64 lo = N * tid / T, hi = N * (tid + 1) / T;
        for (i64 n = lo; n < hi; ++n) {
            const i64 off = n * HW * C;
            const float d = at(dscale, n, 1.0f);
            if (norm == 0) softmax_exp_nhwc(t + off, kf.data(), bf.data(), gf + off, HW, C, inv.data(), m.data());
            std::fill(r.begin(), r.end(), 0.0f);
            // pass 1: the mask a (into gf), the gated gradient g (into gs), r = sum(d g s a)
            for (i64 p = 0; p < HW; ++p) {
                const i64 o = off + p * C;
                const float* yp = relu ? y + o : dy + o;  // y is read in place of dy without ReLU
                if (norm == 0) {
#pragma omp simd
                    for (i64 c = 0; c < C; ++c) {
                        const float g = (relu && !(yp[c] > 0.0f)) ? 0.0f : dy[o + c];
                        const float a = gf[o + c] * inv[c];
                        gf[o + c] = a;
                        gs[o + c] = g;
                        r[c] += d * g * std::fma(u[o + c], ks[c], bs[c]) * a;
                    }
                } else {
#pragma omp simd
                    for (i64 c = 0; c < C; ++c) {
                        const float g = (relu && !(yp[c] > 0.0f)) ? 0.0f : dy[o + c];
                        const float a = sigmoid_f32(std::fma(t[o + c], kf[c], bf[c]));
                        gf[o + c] = a;
                        gs[o + c] = g;
                        r[c] += d * g * std::fma(u[o + c], ks[c], bs[c]) * a;
                    }
                }
            }
            std::fill(pfs.begin(), pfs.end(), 0.0f);
            std::fill(pfsx.begin(), pfsx.end(), 0.0f);
            std::fill(pss.begin(), pss.end(), 0.0f);
            std::fill(pssx.begin(), pssx.end(), 0.0f);
            // pass 2: dL/dF and dL/ds, and the per-channel sums of the norms' backward
            for (i64 p = 0; p < HW; ++p) {
                const i64 o = off + p * C;
#pragma omp simd
                for (i64 c = 0; c < C; ++c) {
                    const float a = gf[o + c], g = gs[o + c];
                    const float s = std::fma(u[o + c], ks[c], bs[c]);
                    const float gb = d * g;
                    // spatial: a (gb s - r); sigmoid: gb s a (1 - a) — no exp either way
                    const float df = norm == 0 ? gb + alpha * a * (gb * s - r[c])
                                               : gb + alpha * gb * s * a * (1.0f - a);
                    const float ds = g + alpha * gb * a;
                    pfs[c] += df;
                    pfsx[c] += df * (t[o + c] - fmu[c]);
                    pss[c] += ds;
                    pssx[c] += ds * (u[o + c] - smu[c]);
                    gf[o + c] = df * fout[c];
                    gs[o + c] = ds * sout[c];
                }
            }
            for (i64 c = 0; c < C; ++c) {
                acc[c] += pfs[c];
                acc[C + c] += pfsx[c];
                acc[2 * C + c] += pss[c];
                acc[3 * C + c] += pssx[c];
                acc[4 * C + c] += r[c];
            }
        }
    }
    double* outs[5] = {f_sum, f_sumx, s_sum, s_sumx, a_sum};
    for (int j = 0; j < 5; ++j)
        for (i64 c = 0; c < C; ++c) {
            double total = 0.0;
            for (int th = 0; th < T; ++th) total += part[(static_cast<size_t>(th) * 5 + j) * C + c];
            outs[j][c] = total;
        }
    if (f_mode == 2 && f_need)
        bn_train_backward_nhwc(gf, t, N, C, HW, kf.data(), fmu.data(), f_invstd, f_sum, f_sumx, nt);
    if (s_mode == 2 && s_need)
        bn_train_backward_nhwc(gs, u, N, C, HW, ks.data(), smu.data(), s_invstd, s_sum, s_sumx, nt);
}

}  // namespace

extern "C" {

int ab_abi_version() { return 5; }

// Per-channel affine form of a BatchNorm, rounded as PyTorch's CPU kernel rounds it:
// k = invstd * w, b = fma(-mean, k, bias); the norm's output is then fma(x, k, b).
void ab_bn_affine(const float* mean, const float* invstd, const float* w, const float* b, i64 C,
                  float* k_out, float* b_out) {
    for (i64 c = 0; c < C; ++c) {
        const float k = w ? invstd[c] * w[c] : invstd[c];
        k_out[c] = k;
        b_out[c] = std::fma(-mean[c], k, b ? b[c] : 0.0f);
    }
}


// Per-channel batch statistics over (N, H*W) as PyTorch's CPU BatchNorm computes them (see
// channel_stats_nchw). layout: 0 NCHW, 1 channels_last.
void ab_channel_stats(const float* x, i64 N, i64 C, i64 HW, int layout, double eps, float* mean,
                      float* var_sum, float* invstd, int nt) {
    (layout ? channel_stats_nhwc : channel_stats_nchw)(x, N, C, HW, eps, mean, var_sum, invstd, nt);
}

void ab_merge_fwd(const float* t, const float* u, float* y, i64 N, i64 C, i64 HW, int layout,
                  const float* fk, const float* fb, const float* sk, const float* sb, float alpha,
                  const float* dscale, int norm, int relu, int nt) {
    (layout ? merge_fwd_nhwc : merge_fwd_nchw)(t, u, y, N, C, HW, fk, fb, sk, sb, alpha, dscale,
                                               norm, relu, nt);
}

void ab_merge_bwd(const float* dy, const float* y, const float* t, const float* u, i64 N, i64 C,
                  i64 HW, int layout, const float* fk, const float* fb, const float* sk,
                  const float* sb, float alpha, const float* dscale, int norm, float* gf,
                  float* gs, int f_mode, const float* f_mean, const float* f_invstd, int f_need,
                  int s_mode, const float* s_mean, const float* s_invstd, int s_need,
                  double* f_sum, double* f_sumx, double* s_sum, double* s_sumx, double* a_sum,
                  int nt) {
    (layout ? merge_bwd_nhwc : merge_bwd_nchw)(dy, y, t, u, N, C, HW, fk, fb, sk, sb, alpha,
                                               dscale, norm, gf, gs, f_mode, f_mean, f_invstd,
                                               f_need, s_mode, s_mean, s_invstd, s_need, f_sum,
                                               f_sumx, s_sum, s_sumx, a_sum, nt);
}

}  // extern "C"
