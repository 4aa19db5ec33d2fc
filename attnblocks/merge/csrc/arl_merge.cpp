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
// Channels_last tensors are processed in blocks of CB channels: the inner loops run over the
// contiguous channels, and the per-plane reductions are kept per channel of the block.
//
// Plain C ABI (loaded with ctypes), no PyTorch headers; the loops vectorise with -O3 and OpenMP simd.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

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
    float fx = std::floor(x * 1.44269504088896341f + 0.5f);
    x = x - fx * 0.693359375f;
    x = x + fx * 2.12194440e-4f;
    const float z = x * x;
    float p = 1.9875691500e-4f;
    p = p * x + 1.3981999507e-3f;
    p = p * x + 8.3334519073e-3f;
    p = p * x + 4.1665795894e-2f;
    p = p * x + 1.6666665459e-1f;
    p = p * x + 5.0000001201e-1f;
    p = p * z + x + 1.0f;
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


constexpr i64 CB = 16;  // channels per block in channels_last kernels (one AVX-512 vector)

// Channels_last batch statistics: the same sums as channel_stats_nchw, per block of channels.
void channel_stats_nhwc(const float* x, i64 N, i64 C, i64 HW, double eps, float* mean,
                        float* var_sum, float* invstd, int nt) {
    const i64 nb = (C + CB - 1) / CB;
    const double count = static_cast<double>(N) * static_cast<double>(HW);
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
    for (i64 blk = 0; blk < nb; ++blk) {
        const i64 c0 = blk * CB, cn = std::min(CB, C - c0);
        double s[CB] = {0}, q[CB] = {0};
        float mu[CB];
        for (i64 p = 0; p < N * HW; ++p) {
            const float* xp = x + p * C + c0;
            for (i64 j = 0; j < cn; ++j) s[j] += xp[j];
        }
        for (i64 j = 0; j < cn; ++j) mu[j] = static_cast<float>(s[j] / count);
        for (i64 p = 0; p < N * HW; ++p) {
            const float* xp = x + p * C + c0;
            for (i64 j = 0; j < cn; ++j) {
                const float dv = xp[j] - mu[j];
                q[j] += static_cast<double>(dv * dv);
            }
        }
        for (i64 j = 0; j < cn; ++j) {
            const float v = static_cast<float>(q[j]) / static_cast<float>(count);
            mean[c0 + j] = mu[j];
            var_sum[c0 + j] = static_cast<float>(q[j]);
            invstd[c0 + j] = static_cast<float>(1.0 / std::sqrt(static_cast<double>(v) + eps));
        }
    }
}

// Spatial softmax of one sample's block of channels (channels_last): e[p, j] = exp(F - m_j),
// inv[j] = 1 / sum_p e[p, j]; m_j = 0 unless some exp saturates or all underflow (as softmax_exp).
inline void softmax_exp_nhwc(const float* t, const float* k, const float* b, float* e, i64 HW,
                             i64 C, i64 cn, float* inv) {
    float sum[CB] = {0};
    for (i64 p = 0; p < HW; ++p) {
        const float* tp = t + p * C;
        float* ep = e + p * C;
#pragma omp simd
        for (i64 j = 0; j < cn; ++j) {
            const float v = exp_f32(std::fma(tp[j], k[j], b[j]));
            ep[j] = v;
            sum[j] += v;
        }
    }
    bool redo = false;
    for (i64 j = 0; j < cn; ++j) redo |= !(sum[j] >= 1e-30f && sum[j] <= 1e30f);
    if (redo) {
        float m[CB];
        for (i64 j = 0; j < cn; ++j) m[j] = -INFINITY, sum[j] = 0.0f;
        for (i64 p = 0; p < HW; ++p)
            for (i64 j = 0; j < cn; ++j) m[j] = std::max(m[j], std::fma(t[p * C + j], k[j], b[j]));
        for (i64 p = 0; p < HW; ++p) {
            const float* tp = t + p * C;
            float* ep = e + p * C;
            for (i64 j = 0; j < cn; ++j) {
                const float v = exp_f32(std::fma(tp[j], k[j], b[j]) - m[j]);
                ep[j] = v;
                sum[j] += v;
            }
        }
    }
    for (i64 j = 0; j < cn; ++j) inv[j] = 1.0f / sum[j];
}

void load_affine(const float* k, const float* b, i64 c0, i64 cn, float* ko, float* bo) {
    for (i64 j = 0; j < cn; ++j) {
        ko[j] = at(k, c0 + j, 1.0f);
        bo[j] = at(b, c0 + j, 0.0f);
    }
}

void merge_fwd_nhwc(const float* t, const float* u, float* y, i64 N, i64 C, i64 HW,
                    const float* fk, const float* fb, const float* sk, const float* sb, float alpha,
                    const float* dscale, int norm, int relu, int nt) {
    const i64 nb = (C + CB - 1) / CB;
#pragma omp parallel for collapse(2) num_threads(nt) if (nt > 1) schedule(static)
    for (i64 n = 0; n < N; ++n)
    for (i64 blk = 0; blk < nb; ++blk) {
        const i64 c0 = blk * CB, cn = std::min(CB, C - c0);
        float kf[CB], bf[CB], ks[CB], bs[CB], ai[CB];
        load_affine(fk, fb, c0, cn, kf, bf);
        load_affine(sk, sb, c0, cn, ks, bs);
        const float d = at(dscale, n, 1.0f);
        const i64 off = n * HW * C + c0;
        if (norm == 0) {
            softmax_exp_nhwc(t + off, kf, bf, y + off, HW, C, cn, ai);
            for (i64 j = 0; j < cn; ++j) ai[j] *= alpha;
        }
        for (i64 p = 0; p < HW; ++p) {
            const float* tp = t + off + p * C;
            const float* up = u + off + p * C;
            float* yp = y + off + p * C;
#pragma omp simd
            for (i64 j = 0; j < cn; ++j) {
                const float f = std::fma(tp[j], kf[j], bf[j]);
                const float s = std::fma(up[j], ks[j], bs[j]);
                const float am = norm == 0 ? ai[j] * yp[j] : alpha * sigmoid_f32(f);
                const float z = s + d * (f + am * s);
                yp[j] = relu ? (z < 0.0f ? 0.0f : z) : z;
            }
        }
    }
}

// Train-mode BatchNorm backward of a block of channels (channels_last), in place over g.
void bn_train_backward_nhwc(float* g, const float* x, i64 N, i64 C, i64 HW, i64 c0, i64 cn,
                            const float* k, const float* mu, const float* invstd, const double* sum,
                            const double* sumx) {
    const double count = static_cast<double>(N) * static_cast<double>(HW);
    float m1[CB], m2[CB], kk[CB], mm[CB];
    for (i64 j = 0; j < cn; ++j) {
        m1[j] = static_cast<float>(sum[j] / count);
        m2[j] = static_cast<float>(sumx[j] / count) * invstd[c0 + j] * invstd[c0 + j];
        kk[j] = k[j];
        mm[j] = mu[j];
    }
    for (i64 p = 0; p < N * HW; ++p) {
        float* gp = g + p * C + c0;
        const float* xp = x + p * C + c0;
#pragma omp simd
        for (i64 j = 0; j < cn; ++j) gp[j] = kk[j] * (gp[j] - m1[j] - (xp[j] - mm[j]) * m2[j]);
    }
}

void merge_bwd_nhwc(const float* dy, const float* y, const float* t, const float* u, i64 N, i64 C,
                    i64 HW, const float* fk, const float* fb, const float* sk, const float* sb,
                    float alpha, const float* dscale, int norm, float* gf, float* gs, int f_mode,
                    const float* f_mean, const float* f_invstd, int f_need, int s_mode,
                    const float* s_mean, const float* s_invstd, int s_need, double* f_sum,
                    double* f_sumx, double* s_sum, double* s_sumx, double* a_sum, int nt) {
    const bool relu = y != nullptr;
    const i64 nb = (C + CB - 1) / CB;
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
    for (i64 blk = 0; blk < nb; ++blk) {
        const i64 c0 = blk * CB, cn = std::min(CB, C - c0);
        float kf[CB], bf[CB], ks[CB], bs[CB], fmu[CB], smu[CB], fout[CB], sout[CB];
        load_affine(fk, fb, c0, cn, kf, bf);
        load_affine(sk, sb, c0, cn, ks, bs);
        for (i64 j = 0; j < cn; ++j) {
            fmu[j] = at(f_mean, c0 + j, 0.0f);
            smu[j] = at(s_mean, c0 + j, 0.0f);
            fout[j] = f_mode == 1 ? kf[j] : 1.0f;
            sout[j] = s_mode == 1 ? ks[j] : 1.0f;
        }
        double fs[CB] = {0}, fsx[CB] = {0}, ss[CB] = {0}, ssx[CB] = {0}, as[CB] = {0};
        for (i64 n = 0; n < N; ++n) {
            const i64 off = n * HW * C + c0;
            const float d = at(dscale, n, 1.0f);
            float inv[CB], r[CB] = {0};
            float pfs[CB] = {0}, pfsx[CB] = {0}, pss[CB] = {0}, pssx[CB] = {0};
            if (norm == 0) softmax_exp_nhwc(t + off, kf, bf, gf + off, HW, C, cn, inv);
            // pass 1: the mask a (into gf), the gated gradient g (into gs), r = sum(d g s a)
            for (i64 p = 0; p < HW; ++p) {
                const i64 o = off + p * C;
#pragma omp simd
                for (i64 j = 0; j < cn; ++j) {
                    const float yv = relu ? y[o + j] : dy[o + j];
                    const float g = (relu && !(yv > 0.0f)) ? 0.0f : dy[o + j];
                    const float a = norm == 0 ? gf[o + j] * inv[j]
                                              : sigmoid_f32(std::fma(t[o + j], kf[j], bf[j]));
                    gf[o + j] = a;
                    gs[o + j] = g;
                    r[j] += d * g * std::fma(u[o + j], ks[j], bs[j]) * a;
                }
            }
            // pass 2: dL/dF and dL/ds, and the per-channel sums of the norms' backward
            for (i64 p = 0; p < HW; ++p) {
                const i64 o = off + p * C;
#pragma omp simd
                for (i64 j = 0; j < cn; ++j) {
                    const float a = gf[o + j], g = gs[o + j];
                    const float s = std::fma(u[o + j], ks[j], bs[j]);
                    const float gb = d * g;
                    const float df = norm == 0 ? gb + alpha * a * (gb * s - r[j])
                                               : gb + alpha * gb * s * a * (1.0f - a);
                    const float ds = g + alpha * gb * a;
                    pfs[j] += df;
                    pfsx[j] += df * (t[o + j] - fmu[j]);
                    pss[j] += ds;
                    pssx[j] += ds * (u[o + j] - smu[j]);
                    gf[o + j] = df * fout[j];
                    gs[o + j] = ds * sout[j];
                }
            }
            for (i64 j = 0; j < cn; ++j) {
                fs[j] += pfs[j];
                fsx[j] += pfsx[j];
                ss[j] += pss[j];
                ssx[j] += pssx[j];
                as[j] += r[j];
            }
        }
        for (i64 j = 0; j < cn; ++j) {
            f_sum[c0 + j] = fs[j];
            f_sumx[c0 + j] = fsx[j];
            s_sum[c0 + j] = ss[j];
            s_sumx[c0 + j] = ssx[j];
            a_sum[c0 + j] = as[j];
        }
        if (f_mode == 2 && f_need)
            bn_train_backward_nhwc(gf, t, N, C, HW, c0, cn, kf, fmu, f_invstd, fs, fsx);
        if (s_mode == 2 && s_need)
            bn_train_backward_nhwc(gs, u, N, C, HW, c0, cn, ks, smu, s_invstd, ss, ssx);
    }
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
