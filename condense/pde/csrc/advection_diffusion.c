/* Fused Du Fort-Frankel advection-diffusion solver (Eq. 4 of "Condensing CNNs with PDEs").
 *
 * One plane (one channel of one sample, H x W) at a time: its coefficients and its three time levels
 * stay in a per-thread scratch that fits in cache, so the K steps cost one read of the inputs and one
 * write of the output instead of ~7 passes over memory per step. The backward pass recomputes the K
 * states of a plane in scratch (nothing is stored between forward and backward) and runs the adjoint
 * recursion. Compiled twice: -DREAL=float and -DREAL=double.
 *
 * Layout: every tensor argument is a plane-strided array: plane p = n * C + c starts at
 * n * sn + c * sc and holds H * W contiguous values. A NULL field means: source 0, velocity 0, or
 * constant diffusion (dxc, dyc). Boundary: 0 periodic, 1 replicate, 2 zero.
 * Bounds: courant > 0 maps u -> u / sqrt(1 + (u / umax)^2) with umax = courant * dx / dt (v likewise, dy);
 * dmax > 0 maps D -> clamp(D, 0, dmax).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifndef REAL
#define REAL float
#endif
typedef REAL real;

typedef struct {
    const real *ptr;
    long sn, sc;
} field;

static inline const real *plane_of(field f, long p, long C) {
    return f.ptr ? f.ptr + (p / C) * f.sn + (p % C) * f.sc : NULL;
}

/* index of the neighbour at i + d (d = +1 / -1) along an axis of length n; -1 means "zero". */
static inline long nb(long i, long d, long n, int boundary) {
    long j = i + d;
    if (j >= 0 && j < n) return j;
    if (boundary == 0) return (j + n) % n;
    if (boundary == 1) return j < 0 ? 0 : n - 1;
    return -1;
}

static inline real at(const real *a, long row, long col, long W) {
    return (row < 0 || col < 0) ? (real)0 : a[row * W + col];
}

typedef struct {
    long H, W, C;
    int K, boundary;
    double dt, dx, dy, dxc, dyc, courant, dmax;
} params;

/* Coefficients of H^{k+1} = a0 H^{k-1} + a1 H^k + cE H[x+1] + cW H[x-1] + cN H[y+1] + cS H[y-1] + s. */
typedef struct {
    real *a0, *a1, *cE, *cW, *cN, *cS, *s;
} coefs;

/* The velocity bound: u / sqrt(1 + (u / umax)^2) -- the identity near 0, |result| < umax, smooth,
 * and cheap to vectorise (one sqrt, one divide). */
#define SQRT(x) (sizeof(real) == sizeof(float) ? (real)sqrtf((float)(x)) : (real)sqrt((double)(x)))
static inline real bound_vel(real u, double umax) {
    if (umax <= 0) return u;
    real t = u * (real)(1 / umax);
    return u / SQRT((real)1 + t * t);
}
static inline real dbound_vel(real u, double umax) { /* derivative of bound_vel: (1 + t^2)^(-3/2) */
    if (umax <= 0) return (real)1;
    real t = u * (real)(1 / umax);
    real r = (real)1 / SQRT((real)1 + t * t);
    return r * r * r;
}
#define CLAMP(x, lo, hi) ((x) < (lo) ? (lo) : ((x) > (hi) ? (hi) : (x)))
static inline real bound_d(real d, double dmax) {
    if (dmax <= 0) return d;
    return d < 0 ? (real)0 : (d > dmax ? (real)dmax : d);
}
static inline real dbound_d(real d, double dmax) {
    if (dmax <= 0) return (real)1;
    return (d >= 0 && d <= dmax) ? (real)1 : (real)0;
}

/* ub = bound_vel(u), vb = bound_vel(v) */
static void bound_velocities(const real *restrict u, const real *restrict v, real *restrict ub,
                             real *restrict vb, long n, real umax, real vmax) {
    const real ru = (real)1 / umax, rv = (real)1 / vmax;
    for (long i = 0; i < n; i++) {
        real tu = u[i] * ru, tv = v[i] * rv;
        ub[i] = u[i] / SQRT((real)1 + tu * tu);
        vb[i] = v[i] / SQRT((real)1 + tv * tv);
    }
}

static void compute_coefs(const params *q, const real *f, const real *u, const real *v, const real *Dx,
                          const real *Dy, coefs c, real *restrict ub, real *restrict vb, const real *zero) {
    const long H = q->H, W = q->W, HW = H * W;
    const double umax = q->courant > 0 ? q->courant * q->dx / q->dt : 0;
    const double vmax = q->courant > 0 ? q->courant * q->dy / q->dt : 0;
    const real kx = (real)(q->dt / (q->dx * q->dx)), ky = (real)(q->dt / (q->dy * q->dy));
    const real dxc = (real)q->dxc, dyc = (real)q->dyc, two_dt = (real)(2 * q->dt);
    real *restrict a0 = c.a0, *restrict a1 = c.a1, *restrict cE = c.cE, *restrict cW = c.cW;
    real *restrict cN = c.cN, *restrict cS = c.cS, *restrict s = c.s;
    /* pass 1: bounded velocity (or the raw one); pass 2: the diffusion part of every coefficient, with
     * a1 holding 1/L for now; pass 3 below adds advection. Loops are split by case so they vectorise. */
    const real *uu = u, *vv = v;
    if (u && umax > 0) {
        bound_velocities(u, v, ub, vb, HW, (real)umax, (real)vmax);
        uu = ub;
        vv = vb;
    }
    if (Dx) {
        const real dm = (real)(q->dmax > 0 ? q->dmax : 1e30);
#pragma omp simd
        for (long i = 0; i < HW; i++) {
            real bx = CLAMP(Dx[i], (real)0, dm) * kx;
            real by = CLAMP(Dy[i], (real)0, dm) * ky;
            real iL = (real)1 / ((real)1 + 2 * bx + 2 * by);
            a0[i] = ((real)1 - 2 * bx - 2 * by) * iL;
            a1[i] = iL;
            cE[i] = cW[i] = 2 * bx * iL;
            cN[i] = cS[i] = 2 * by * iL;
        }
    } else {
        const real bx = dxc * kx, by = dyc * ky, iL = (real)1 / ((real)1 + 2 * bx + 2 * by);
        const real va0 = ((real)1 - 2 * bx - 2 * by) * iL, vx = 2 * bx * iL, vy = 2 * by * iL;
#pragma omp simd
        for (long i = 0; i < HW; i++) {
            a0[i] = va0;
            a1[i] = iL;
            cE[i] = cW[i] = vx;
            cN[i] = cS[i] = vy;
        }
    }
    if (f) {
#pragma omp simd
        for (long i = 0; i < HW; i++) s[i] = two_dt * f[i] * a1[i];
    } else {
        memset(s, 0, sizeof(real) * HW);
    }
    if (!u) {
        memset(a1, 0, sizeof(real) * HW);
        return;
    }
    /* pass 3: advection: a1 = -2 dt (u_x + v_y) / L, cE/cW -= / += Ax / L, cN/cS -= / += Ay / L */
    const real hx = (real)(0.5 / q->dx), hy = (real)(0.5 / q->dy);
    const real ax = (real)(q->dt / q->dx), ay = (real)(q->dt / q->dy), m2dt = (real)(-2 * q->dt);
    for (long y = 0; y < H; y++) {
        long yn = nb(y, 1, H, q->boundary), ys = nb(y, -1, H, q->boundary);
        const long o = y * W;
        const real *restrict un = uu + o, *restrict vc = vv + o;
        const real *restrict vn = yn < 0 ? zero : vv + yn * W, *restrict vs = ys < 0 ? zero : vv + ys * W;
        real *restrict ra1 = a1 + o, *restrict rE = cE + o, *restrict rW = cW + o, *restrict rN = cN + o,
             *restrict rS = cS + o;
#pragma omp simd
        for (long x = 1; x < W - 1; x++) {
            real div = (un[x + 1] - un[x - 1]) * hx + (vn[x] - vs[x]) * hy;
            real iL = ra1[x];
            ra1[x] = m2dt * div * iL;
            real axi = un[x] * ax * iL, ayi = vc[x] * ay * iL;
            rE[x] -= axi;
            rW[x] += axi;
            rN[x] -= ayi;
            rS[x] += ayi;
        }
        long edges[2] = {0, W - 1};
        for (int e = 0; e < (W > 1 ? 2 : 1); e++) {
            long x = edges[e];
            long xe = nb(x, 1, W, q->boundary), xw = nb(x, -1, W, q->boundary);
            real ue = xe < 0 ? 0 : un[xe], uw = xw < 0 ? 0 : un[xw];
            real div = (ue - uw) * hx + (vn[x] - vs[x]) * hy;
            real iL = ra1[x];
            ra1[x] = m2dt * div * iL;
            real axi = un[x] * ax * iL, ayi = vc[x] * ay * iL;
            rE[x] -= axi;
            rW[x] += axi;
            rN[x] -= ayi;
            rS[x] += ayi;
        }
    }
}

/* hn = one Du Fort-Frankel step from (hm = H^{k-1}, hc = H^k). */
static void step(const params *q, coefs c, const real *restrict hm, const real *restrict hc,
                 real *restrict hn, const real *restrict zero) {
    const long H = q->H, W = q->W;
    for (long y = 0; y < H; y++) {
        long yn = nb(y, 1, H, q->boundary), ys = nb(y, -1, H, q->boundary);
        const real *rc = hc + y * W;
        const real *rn = yn < 0 ? NULL : hc + yn * W;
        const real *rs = ys < 0 ? NULL : hc + ys * W;
        const long o = y * W;
        const real *a0 = c.a0 + o, *a1 = c.a1 + o, *cE = c.cE + o, *cW = c.cW + o, *cN = c.cN + o,
                   *cS = c.cS + o, *s = c.s + o, *m = hm + o;
        real *out = hn + o;
        /* hn never aliases hm / hc (three rotating buffers), so the row loops vectorise (omp simd; without
         * it the 12 pointers exceed the compiler's alias-check budget and the loop stays scalar) */
        if (rn && rs) {
#pragma omp simd
            for (long x = 1; x < W - 1; x++)
                out[x] = s[x] + a0[x] * m[x] + a1[x] * rc[x] + cE[x] * rc[x + 1] + cW[x] * rc[x - 1] +
                         cN[x] * rn[x] + cS[x] * rs[x];
        } else {
            const real *rnn = rn ? rn : zero, *rss = rs ? rs : zero;
#pragma omp simd
            for (long x = 1; x < W - 1; x++)
                out[x] = s[x] + a0[x] * m[x] + a1[x] * rc[x] + cE[x] * rc[x + 1] + cW[x] * rc[x - 1] +
                         cN[x] * rnn[x] + cS[x] * rss[x];
        }
        long edges[2] = {0, W - 1};
        for (int e = 0; e < (W > 1 ? 2 : 1); e++) {
            long x = edges[e];
            long xe = nb(x, 1, W, q->boundary), xw = nb(x, -1, W, q->boundary);
            out[x] = s[x] + a0[x] * m[x] + a1[x] * rc[x] + cE[x] * at(hc, y, xe, W) + cW[x] * at(hc, y, xw, W) +
                     (rn ? cN[x] * rn[x] : 0) + (rs ? cS[x] * rs[x] : 0);
        }
    }
}

static real *alloc_real(long n) { return (real *)malloc(sizeof(real) * (size_t)(n > 0 ? n : 1)); }

/* ou = bu + wu (*) x and ov = bv + wv (*) x: two depthwise k x k correlations of one plane with zero padding
 * k / 2 (what nn.Conv2d computes), in one pass. The plane is copied into a zero-padded scratch of row
 * stride Wp = W + 2r, so every tap is one long branch-free loop over H * Wp points (the Wp - W extra
 * columns per row are computed and dropped): short rows (7, 14) still vectorise. */
static void dwconv2_plane(const real *restrict x, const real *restrict wu, real bu, const real *restrict wv,
                          real bv, int ks, long H, long W, real *restrict pad, real *restrict tu,
                          real *restrict tv, real *restrict ou, real *restrict ov) {
    const long r = ks / 2, Wp = W + 2 * r, Hp = H + 2 * r;
    memset(pad, 0, sizeof(real) * Hp * Wp);
    for (long y = 0; y < H; y++) memcpy(pad + (y + r) * Wp + r, x + y * W, sizeof(real) * W);
    const long n = (H - 1) * Wp + W; /* the last output point needed, plus one */
    for (long i = 0; i < n; i++) {
        tu[i] = bu;
        tv[i] = bv;
    }
    for (long ky = 0; ky < ks; ky++) {
        for (long kx = 0; kx < ks; kx++) {
            const real a = wu[ky * ks + kx], b = wv[ky * ks + kx];
            const real *restrict src = pad + ky * Wp + kx;
#pragma omp simd
            for (long i = 0; i < n; i++) {
                tu[i] += a * src[i];
                tv[i] += b * src[i];
            }
        }
    }
    for (long y = 0; y < H; y++) {
        memcpy(ou + y * W, tu + y * Wp, sizeof(real) * W);
        memcpy(ov + y * W, tv + y * Wp, sizeof(real) * W);
    }
}

/* The forward pass; with wu != NULL the velocities are not inputs but depthwise convolutions of the
 * initial state, computed here plane by plane (u = conv(H^0, wu[c]) + bu[c], v likewise), so the
 * inference path reads H^0 once for the convolutions and the K steps together. */
static void forward_impl(const real *init, long init_sn, long init_sc, field f, field u, field v, field Dx,
                         field Dy, const real *wu, const real *bu, const real *wv, const real *bv, int ks,
                         real *out, long P, long C, long H, long W, int K, double dt, double dx, double dy,
                         double dxc, double dyc, int boundary, double courant, double dmax, int nthreads) {
    params q = {H, W, C, K, boundary, dt, dx, dy, dxc, dyc, courant, dmax};
    const long HW = H * W;
#pragma omp parallel num_threads(nthreads)
    {
        real *buf = alloc_real(14 * HW + W);
        coefs c = {buf, buf + HW, buf + 2 * HW, buf + 3 * HW, buf + 4 * HW, buf + 5 * HW, buf + 6 * HW};
        real *lv[3] = {buf + 7 * HW, buf + 8 * HW, buf + 9 * HW};
        real *ub = buf + 10 * HW, *vb = buf + 11 * HW, *uraw = buf + 12 * HW, *vraw = buf + 13 * HW;
        real *zero = buf + 14 * HW; /* a row of zeros: the missing neighbour row under a zero boundary */
        memset(zero, 0, sizeof(real) * W);
        const long Wp = W + 2 * (ks / 2), Hp = H + 2 * (ks / 2);
        real *cbuf = wu ? alloc_real(Hp * Wp + 2 * H * Wp) : NULL; /* padded plane, two row-padded outputs */
#pragma omp for schedule(static)
        for (long p = 0; p < P; p++) {
            const real *h0 = init + (p / C) * init_sn + (p % C) * init_sc;
            const real *up = plane_of(u, p, C), *vp = plane_of(v, p, C);
            if (wu) {
                const long ch = p % C;
                dwconv2_plane(h0, wu + ch * ks * ks, bu[ch], wv + ch * ks * ks, bv[ch], ks, H, W, cbuf,
                              cbuf + Hp * Wp, cbuf + Hp * Wp + H * Wp, uraw, vraw);
                up = uraw;
                vp = vraw;
            }
            compute_coefs(&q, plane_of(f, p, C), up, vp, plane_of(Dx, p, C), plane_of(Dy, p, C), c, ub, vb, zero);
            real *dst = out + p * HW;
            if (K == 0) { memcpy(dst, h0, sizeof(real) * HW); continue; }
            const real *hm = h0, *hc = h0;
            for (int k = 0; k < K; k++) {
                real *hn = (k == K - 1) ? dst : lv[k % 3];
                step(&q, c, hm, hc, hn, zero);
                hm = hc;
                hc = hn;
            }
        }
        free(cbuf);
        free(buf);
    }
}

void ad_forward(const real *init, long init_sn, long init_sc, field f, field u, field v, field Dx, field Dy,
                real *out, long P, long C, long H, long W, int K, double dt, double dx, double dy, double dxc,
                double dyc, int boundary, double courant, double dmax, int nthreads) {
    forward_impl(init, init_sn, init_sc, f, u, v, Dx, Dy, NULL, NULL, NULL, NULL, 0, out, P, C, H, W, K, dt, dx,
                 dy, dxc, dyc, boundary, courant, dmax, nthreads);
}

/* Inference only (no backward): velocities from depthwise k x k convolutions of init (weights (C, k*k),
 * biases (C,); a BatchNorm after the convolution is folded into them by the caller). */
void ad_forward_dwvel(const real *init, long init_sn, long init_sc, field f, const real *wu, const real *bu,
                      const real *wv, const real *bv, int ks, field Dx, field Dy, real *out, long P, long C,
                      long H, long W, int K, double dt, double dx, double dy, double dxc, double dyc,
                      int boundary, double courant, double dmax, int nthreads) {
    field none = {NULL, 0, 0};
    forward_impl(init, init_sn, init_sc, f, none, none, Dx, Dy, wu, bu, wv, bv, ks, out, P, C, H, W, K, dt, dx,
                 dy, dxc, dyc, boundary, courant, dmax, nthreads);
}

/* scatter-add of the transposed neighbour maps: lam[nb(p)] += w[p] * g[p] along x (axis 1) or y (axis 0). */
static void scatter_x(const params *q, const real *w, const real *g, real *lam, long d) {
    const long H = q->H, W = q->W;
    for (long y = 0; y < H; y++) {
        const long o = y * W;
        if (g) {
            for (long x = 1; x < W - 1; x++) lam[o + x + d] += w[o + x] * g[o + x];
        } else {
            for (long x = 1; x < W - 1; x++) lam[o + x + d] += w[o + x];
        }
        long edges[2] = {0, W - 1};
        for (int e = 0; e < (W > 1 ? 2 : 1); e++) {
            long x = edges[e], j = nb(x, d, W, q->boundary);
            if (j >= 0) lam[o + j] += w[o + x] * (g ? g[o + x] : (real)1);
        }
    }
}
static void scatter_y(const params *q, const real *w, const real *g, real *lam, long d) {
    const long H = q->H, W = q->W;
    for (long y = 0; y < H; y++) {
        long j = nb(y, d, H, q->boundary);
        if (j < 0) continue;
        const real *wr = w + y * W, *gr = g ? g + y * W : NULL;
        real *lr = lam + j * W;
        if (gr) {
            for (long x = 0; x < W; x++) lr[x] += wr[x] * gr[x];
        } else {
            for (long x = 0; x < W; x++) lr[x] += wr[x];
        }
    }
}
/* gather of the forward neighbour maps: out[p] += w[p] * h[nb(p)] */
static void gather_x(const params *q, const real *g, const real *h, real *acc, long d) {
    const long H = q->H, W = q->W;
    for (long y = 0; y < H; y++) {
        const long o = y * W;
        for (long x = 1; x < W - 1; x++) acc[o + x] += g[o + x] * h[o + x + d];
        long edges[2] = {0, W - 1};
        for (int e = 0; e < (W > 1 ? 2 : 1); e++) {
            long x = edges[e], j = nb(x, d, W, q->boundary);
            if (j >= 0) acc[o + x] += g[o + x] * h[o + j];
        }
    }
}
static void gather_y(const params *q, const real *g, const real *h, real *acc, long d) {
    const long H = q->H, W = q->W;
    for (long y = 0; y < H; y++) {
        long j = nb(y, d, H, q->boundary);
        if (j < 0) continue;
        const real *gr = g + y * W, *hr = h + j * W;
        real *ar = acc + y * W;
        for (long x = 0; x < W; x++) ar[x] += gr[x] * hr[x];
    }
}

void ad_backward(const real *gout, const real *init, long init_sn, long init_sc, field f, field u, field v,
                 field Dx, field Dy, real *ginit, real *gf, real *gu, real *gv, real *gDx, real *gDy, long P,
                 long C, long H, long W, int K, double dt, double dx, double dy, double dxc, double dyc,
                 int boundary, double courant, double dmax, int nthreads) {
    params q = {H, W, C, K, boundary, dt, dx, dy, dxc, dyc, courant, dmax};
    const long HW = H * W;
    const double umax = courant > 0 ? courant * dx / dt : 0;
    const double vmax = courant > 0 ? courant * dy / dt : 0;
#pragma omp parallel num_threads(nthreads)
    {
        /* 7 coefficient planes, 7 coefficient-gradient planes, K + 1 states, 3 adjoint planes */
        real *buf = alloc_real((20 + (long)K) * HW + W);
        real *zero = buf + (20 + (long)K) * HW;
        memset(zero, 0, sizeof(real) * W);
        real *ub = buf + (18 + K) * HW, *vb = buf + (19 + K) * HW;
        coefs c = {buf, buf + HW, buf + 2 * HW, buf + 3 * HW, buf + 4 * HW, buf + 5 * HW, buf + 6 * HW};
        real *gbuf = buf + 7 * HW;
        coefs g = {gbuf, gbuf + HW, gbuf + 2 * HW, gbuf + 3 * HW, gbuf + 4 * HW, gbuf + 5 * HW, gbuf + 6 * HW};
        real *states = buf + 14 * HW;               /* states[k] = H^k, k = 0..K */
        real *lam[3] = {buf + (15 + K) * HW, buf + (16 + K) * HW, buf + (17 + K) * HW};
#pragma omp for schedule(static)
        for (long p = 0; p < P; p++) {
            const real *h0 = init + (p / C) * init_sn + (p % C) * init_sc;
            const real *fp = plane_of(f, p, C), *up = plane_of(u, p, C), *vp = plane_of(v, p, C);
            const real *dxp = plane_of(Dx, p, C), *dyp = plane_of(Dy, p, C);
            compute_coefs(&q, fp, up, vp, dxp, dyp, c, ub, vb, zero);
            memcpy(states, h0, sizeof(real) * HW);
            for (int k = 0; k < K; k++)
                step(&q, c, k == 0 ? states : states + (k - 1) * HW, states + k * HW, states + (k + 1) * HW, zero);
            memset(gbuf, 0, sizeof(real) * 7 * HW);
            /* adjoints: lam_next = lambda^{k+1}, lam_cur = lambda^k, lam_prev = lambda^{k-1} */
            real *ln = lam[0], *lc = lam[1], *lp = lam[2];
            const real *go = gout + p * HW;
            if (K == 0) {
                if (ginit) memcpy(ginit + p * HW, go, sizeof(real) * HW);
                continue;
            }
            memcpy(ln, go, sizeof(real) * HW);
            memset(lc, 0, sizeof(real) * HW);
            memset(lp, 0, sizeof(real) * HW);
            for (int k = K - 1; k >= 0; k--) {
                const real *hk = states + k * HW;
                const real *hkm = states + (k > 0 ? k - 1 : 0) * HW;
                for (long i = 0; i < HW; i++) {
                    real l = ln[i];
                    g.a0[i] += l * hkm[i];
                    g.a1[i] += l * hk[i];
                    g.s[i] += l;
                    lp[i] += c.a0[i] * l;
                    lc[i] += c.a1[i] * l;
                }
                gather_x(&q, ln, hk, g.cE, 1);
                gather_x(&q, ln, hk, g.cW, -1);
                gather_y(&q, ln, hk, g.cN, 1);
                gather_y(&q, ln, hk, g.cS, -1);
                scatter_x(&q, c.cE, ln, lc, 1);
                scatter_x(&q, c.cW, ln, lc, -1);
                scatter_y(&q, c.cN, ln, lc, 1);
                scatter_y(&q, c.cS, ln, lc, -1);
                /* rotate: lambda^{k+1} is done; next step needs lambda^k (complete) and lambda^{k-1} */
                real *t = ln;
                ln = lc;
                lc = lp;
                lp = t;
                memset(lp, 0, sizeof(real) * HW);
            }
            /* now ln = lambda^0 and lc = lambda^{-1}; H^{-1} = H^0 = init */
            if (ginit) {
                real *gi = ginit + p * HW;
                for (long i = 0; i < HW; i++) gi[i] = ln[i] + lc[i];
            }
            /* chain rule from the coefficients to source, velocity and diffusion */
            real *gfp = gf ? gf + p * HW : NULL, *gup = gu ? gu + p * HW : NULL, *gvp = gv ? gv + p * HW : NULL;
            real *gdxp = gDx ? gDx + p * HW : NULL, *gdyp = gDy ? gDy + p * HW : NULL;
            /* pass 1 (vectorised): per element; afterwards g.a1 holds d/d(u_x + v_y), g.cE d/d(bounded u)
             * and g.cN d/d(bounded v) of the direct (non-derivative) terms */
            const real kx = (real)(dt / (dx * dx)), ky = (real)(dt / (dy * dy)), two_dt = (real)(2 * dt);
            const real dm = (real)(dmax > 0 ? dmax : 1e30), m2dt = (real)(-2 * dt);
            const real adx = (real)(dt / dx), ady = (real)(dt / dy);
            const real cdx = (real)dxc, cdy = (real)dyc;
#pragma omp simd
            for (long i = 0; i < HW; i++) {
                real dxv = dxp ? CLAMP(dxp[i], (real)0, dm) : cdx;
                real dyv = dyp ? CLAMP(dyp[i], (real)0, dm) : cdy;
                real iL = (real)1 / ((real)1 + 2 * dxv * kx + 2 * dyv * ky);
                real T = g.a0[i] * c.a0[i] + g.a1[i] * c.a1[i] + g.cE[i] * c.cE[i] + g.cW[i] * c.cW[i] +
                         g.cN[i] * c.cN[i] + g.cS[i] * c.cS[i] + g.s[i] * c.s[i];
                if (gfp) gfp[i] = g.s[i] * two_dt * iL;
                if (gdxp) {
                    real pass = (dxp[i] >= 0 && dxp[i] <= dm) ? (real)1 : (real)0;
                    gdxp[i] = (2 * (g.cE[i] + g.cW[i] - g.a0[i]) - 2 * T) * iL * kx * pass;
                }
                if (gdyp) {
                    real pass = (dyp[i] >= 0 && dyp[i] <= dm) ? (real)1 : (real)0;
                    gdyp[i] = (2 * (g.cN[i] + g.cS[i] - g.a0[i]) - 2 * T) * iL * ky * pass;
                }
                real gdiv = g.a1[i] * m2dt * iL;
                real gub = (g.cW[i] - g.cE[i]) * iL * adx;
                real gvb = (g.cS[i] - g.cN[i]) * iL * ady;
                g.a1[i] = gdiv;
                g.cE[i] = gub;
                g.cN[i] = gvb;
            }
            if (gup || gvp) {
                /* pass 2: the central differences' transposes, into d/d(bounded u), d/d(bounded v) */
                const real hx = (real)(0.5 / dx), hy = (real)(0.5 / dy);
                real *gub = g.cE, *gvb = g.cN;
#pragma omp simd
                for (long i = 0; i < HW; i++) {
                    g.cW[i] = g.a1[i] * hx;  /* + at x+1 */
                    g.cS[i] = -g.a1[i] * hx; /* - at x-1 */
                }
                if (gup) {
                    scatter_x(&q, g.cW, NULL, gub, 1);
                    scatter_x(&q, g.cS, NULL, gub, -1);
                }
#pragma omp simd
                for (long i = 0; i < HW; i++) {
                    g.cW[i] = g.a1[i] * hy;
                    g.cS[i] = -g.a1[i] * hy;
                }
                if (gvp) {
                    scatter_y(&q, g.cW, NULL, gvb, 1);
                    scatter_y(&q, g.cS, NULL, gvb, -1);
                }
                /* pass 3 (vectorised): through the velocity bound */
                const real ru = (real)(umax > 0 ? 1 / umax : 0), rv = (real)(vmax > 0 ? 1 / vmax : 0);
                if (gup) {
#pragma omp simd
                    for (long i = 0; i < HW; i++) {
                        real tu = up[i] * ru, r = (real)1 / SQRT((real)1 + tu * tu);
                        gup[i] = gub[i] * r * r * r;
                    }
                }
                if (gvp) {
#pragma omp simd
                    for (long i = 0; i < HW; i++) {
                        real tv = vp[i] * rv, r = (real)1 / SQRT((real)1 + tv * tv);
                        gvp[i] = gvb[i] * r * r * r;
                    }
                }
            }
        }
        free(buf);
    }
}
