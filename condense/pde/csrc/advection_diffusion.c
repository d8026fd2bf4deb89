/* Fused Du Fort-Frankel advection-diffusion solver (Eq. 4 of "Condensing CNNs with PDEs").
 *
 * One plane (one channel of one sample, H x W) at a time: its coefficients and its time levels stay in a
 * per-thread scratch that fits in cache, so the K steps cost one read of the inputs and one write of the
 * output instead of ~7 passes over memory per step. The backward pass recomputes the K states of a plane
 * in scratch (nothing is stored between forward and backward) and runs the adjoint recursion.
 * Compiled twice: -DREAL=float and -DREAL=double.
 *
 * Scratch layout ("padded plane"): a plane is held with a one-element halo, row stride Wp = W + 2 and
 * H + 4 rows (the plane's rows 0..H-1 are rows 2..H+1; rows 1 and H+2 are the halo rows, rows 0 and H+3
 * stay zero so that every +-Wp access of a halo element is in bounds). Before a stencil reads a state,
 * its halo is filled from the plane by the boundary rule (periodic: wrapped, replicate: the edge, zero:
 * 0), so every step, and every adjoint step, is ONE branch-free loop over all points from the first to
 * the last plane element (the halo columns in between are computed with zero coefficients and dropped),
 * which vectorises even for 7 x 7 planes. The adjoint of the halo fill ("fold") adds halo values back
 * onto the plane elements they were copied from.
 *
 * Input layout: every tensor argument is a plane-strided array: plane p = n * C + c starts at
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

typedef struct {
    long H, W, C;
    int K, boundary;
    double dt, dx, dy, dxc, dyc, courant, dmax;
    /* padded geometry: row stride, size, offset and count of the plane span (first to last element),
     * offset and count of the wide span (first to last halo element) */
    long Wp, S, o0, n, ow, nw;
} params;

static params make_params(long H, long W, long C, int K, int boundary, double dt, double dx, double dy,
                          double dxc, double dyc, double courant, double dmax) {
    params q = {H, W, C, K, boundary, dt, dx, dy, dxc, dyc, courant, dmax, 0, 0, 0, 0, 0, 0};
    q.Wp = W + 2;
    q.S = (H + 4) * q.Wp;
    q.o0 = 2 * q.Wp + 1;
    q.n = (H - 1) * q.Wp + W;
    q.ow = q.Wp;
    q.nw = (H + 2) * q.Wp;
    return q;
}

/* plane (H x W, contiguous) <-> padded plane interior */
static void pad_in(const params *q, const real *restrict src, real *restrict dst) {
    for (long y = 0; y < q->H; y++) memcpy(dst + q->o0 + y * q->Wp, src + y * q->W, sizeof(real) * q->W);
}
static void pad_out(const params *q, const real *restrict src, real *restrict dst) {
    for (long y = 0; y < q->H; y++) memcpy(dst + y * q->W, src + q->o0 + y * q->Wp, sizeof(real) * q->W);
}

/* the halo of a padded plane from its interior, by the boundary rule: columns first, then the two halo
 * rows are copied whole (their corners are never read by the 5-point stencil) */
static void fill_halo(const params *q, real *h) {
    const long H = q->H, W = q->W, Wp = q->Wp;
    real *first = h + q->o0, *last = first + (H - 1) * Wp;
    for (long y = 0; y < H; y++) {
        real *row = first + y * Wp;
        if (q->boundary == 0) {
            row[-1] = row[W - 1];
            row[W] = row[0];
        } else if (q->boundary == 1) {
            row[-1] = row[0];
            row[W] = row[W - 1];
        } else {
            row[-1] = row[W] = 0;
        }
    }
    if (q->boundary == 0) {
        memcpy(first - Wp - 1, last - 1, sizeof(real) * Wp);
        memcpy(last + Wp - 1, first - 1, sizeof(real) * Wp);
    } else if (q->boundary == 1) {
        memcpy(first - Wp - 1, first - 1, sizeof(real) * Wp);
        memcpy(last + Wp - 1, last - 1, sizeof(real) * Wp);
    } else {
        memset(first - Wp - 1, 0, sizeof(real) * Wp);
        memset(last + Wp - 1, 0, sizeof(real) * Wp);
    }
}

/* the adjoint of fill_halo: add every halo value onto the element it was copied from (rows first, then
 * columns: the reverse order), then zero the halo */
static void fold_halo(const params *q, real *g) {
    const long H = q->H, W = q->W, Wp = q->Wp;
    real *first = g + q->o0, *last = first + (H - 1) * Wp;
    real *top = first - Wp - 1, *bottom = last + Wp - 1;
    if (q->boundary != 2) {
        real *to_top = q->boundary == 0 ? last - 1 : first - 1, *to_bottom = q->boundary == 0 ? first - 1 : last - 1;
        for (long x = 0; x < Wp; x++) to_top[x] += top[x];
        for (long x = 0; x < Wp; x++) to_bottom[x] += bottom[x];
    }
    memset(top, 0, sizeof(real) * Wp);
    memset(bottom, 0, sizeof(real) * Wp);
    for (long y = 0; y < H; y++) {
        real *row = first + y * Wp;
        if (q->boundary == 0) {
            row[W - 1] += row[-1];
            row[0] += row[W];
        } else if (q->boundary == 1) {
            row[0] += row[-1];
            row[W - 1] += row[W];
        }
        row[-1] = row[W] = 0;
    }
}

/* zero the halo columns inside the plane span (after a flat loop wrote them) */
static void zero_halo_cols(const params *q, real *a) {
    real *first = a + q->o0;
    for (long y = 0; y < q->H; y++) first[y * q->Wp - 1] = first[y * q->Wp + q->W] = 0;
}

/* Coefficients of H^{k+1} = a0 H^{k-1} + a1 H^k + cE H[x+1] + cW H[x-1] + cN H[y+1] + cS H[y-1] + s,
 * plus the padded raw inputs and bounded velocities the backward pass reuses. All padded planes. */
typedef struct {
    real *a0, *a1, *cE, *cW, *cN, *cS, *s;
    real *f, *u, *v, *Dx, *Dy; /* raw inputs, padded (halo 0) */
    real *ub, *vb;             /* bounded velocities, halo filled */
} coefs;
#define COEF_PLANES 14

static coefs coefs_at(real *buf, long S) {
    coefs c;
    real **slots[COEF_PLANES] = {&c.a0, &c.a1, &c.cE, &c.cW, &c.cN, &c.cS, &c.s,
                                 &c.f, &c.u, &c.v, &c.Dx, &c.Dy, &c.ub, &c.vb};
    for (int i = 0; i < COEF_PLANES; i++) *slots[i] = buf + i * S;
    return c;
}

#define SQRT(x) (sizeof(real) == sizeof(float) ? (real)sqrtf((float)(x)) : (real)sqrt((double)(x)))
#define CLAMP(x, lo, hi) ((x) < (lo) ? (lo) : ((x) > (hi) ? (hi) : (x)))

/* The coefficients of one plane from its padded raw inputs (c.f, c.u, c.v, c.Dx, c.Dy; flags say which
 * are present). The velocity bound u / sqrt(1 + (u / umax)^2) is the identity near 0, |result| < umax,
 * smooth, and cheap to vectorise. Every loop is one flat loop over the plane span. */
static void compute_coefs(const params *q, coefs c, int has_f, int has_vel, int has_d) {
    const long o = q->o0, n = q->n, Wp = q->Wp;
    const real kx = (real)(q->dt / (q->dx * q->dx)), ky = (real)(q->dt / (q->dy * q->dy));
    const real two_dt = (real)(2 * q->dt);
    real *restrict a0 = c.a0 + o, *restrict a1 = c.a1 + o, *restrict cE = c.cE + o, *restrict cW = c.cW + o;
    real *restrict cN = c.cN + o, *restrict cS = c.cS + o, *restrict s = c.s + o;
    if (has_d) {
        const real dm = (real)(q->dmax > 0 ? q->dmax : 1e30);
        const real *restrict Dx = c.Dx + o, *restrict Dy = c.Dy + o;
#pragma omp simd
        for (long i = 0; i < n; i++) {
            real bx = CLAMP(Dx[i], (real)0, dm) * kx, by = CLAMP(Dy[i], (real)0, dm) * ky;
            real iL = (real)1 / ((real)1 + 2 * bx + 2 * by);
            a0[i] = ((real)1 - 2 * bx - 2 * by) * iL;
            a1[i] = iL; /* 1/L for now; the advection pass below turns it into a1 */
            cE[i] = cW[i] = 2 * bx * iL;
            cN[i] = cS[i] = 2 * by * iL;
        }
    } else {
        const real bx = (real)q->dxc * kx, by = (real)q->dyc * ky, iL = (real)1 / ((real)1 + 2 * bx + 2 * by);
        const real va0 = ((real)1 - 2 * bx - 2 * by) * iL, vx = 2 * bx * iL, vy = 2 * by * iL;
#pragma omp simd
        for (long i = 0; i < n; i++) {
            a0[i] = va0;
            a1[i] = iL;
            cE[i] = cW[i] = vx;
            cN[i] = cS[i] = vy;
        }
    }
    if (has_f) {
        const real *restrict f = c.f + o;
#pragma omp simd
        for (long i = 0; i < n; i++) s[i] = two_dt * f[i] * a1[i];
    } else {
        memset(s, 0, sizeof(real) * n);
    }
    if (!has_vel) {
        memset(a1, 0, sizeof(real) * n);
    } else {
        const double umax = q->courant > 0 ? q->courant * q->dx / q->dt : 0;
        const double vmax = q->courant > 0 ? q->courant * q->dy / q->dt : 0;
        if (umax > 0) {
            const real ru = (real)(1 / umax), rv = (real)(1 / vmax);
            const real *restrict u = c.u + o, *restrict v = c.v + o;
            real *restrict ub = c.ub + o, *restrict vb = c.vb + o;
#pragma omp simd
            for (long i = 0; i < n; i++) {
                real tu = u[i] * ru, tv = v[i] * rv;
                ub[i] = u[i] / SQRT((real)1 + tu * tu);
                vb[i] = v[i] / SQRT((real)1 + tv * tv);
            }
        } else {
            memcpy(c.ub + o, c.u + o, sizeof(real) * n);
            memcpy(c.vb + o, c.v + o, sizeof(real) * n);
        }
        fill_halo(q, c.ub);
        fill_halo(q, c.vb);
        /* a1 = -2 dt (u_x + v_y) / L, cE/cW -= / += Ax / L, cN/cS -= / += Ay / L */
        const real hx = (real)(0.5 / q->dx), hy = (real)(0.5 / q->dy);
        const real ax = (real)(q->dt / q->dx), ay = (real)(q->dt / q->dy), m2dt = (real)(-2 * q->dt);
        const real *restrict ub = c.ub + o, *restrict vb = c.vb + o;
#pragma omp simd
        for (long i = 0; i < n; i++) {
            real div = (ub[i + 1] - ub[i - 1]) * hx + (vb[i + Wp] - vb[i - Wp]) * hy;
            real iL = a1[i];
            a1[i] = m2dt * div * iL;
            real axi = ub[i] * ax * iL, ayi = vb[i] * ay * iL;
            cE[i] -= axi;
            cW[i] += axi;
            cN[i] -= ayi;
            cS[i] += ayi;
        }
    }
    real *all[7] = {c.a0, c.a1, c.cE, c.cW, c.cN, c.cS, c.s};
    for (int i = 0; i < 7; i++) zero_halo_cols(q, all[i]);
}

/* hn = one Du Fort-Frankel step from (hm = H^{k-1}, hc = H^k, halo filled); fills hn's halo. */
static void step(const params *q, coefs c, const real *hm, const real *hc, real *hn) {
    const long o = q->o0, n = q->n, Wp = q->Wp;
    const real *restrict a0 = c.a0 + o, *restrict a1 = c.a1 + o, *restrict cE = c.cE + o, *restrict cW = c.cW + o;
    const real *restrict cN = c.cN + o, *restrict cS = c.cS + o, *restrict s = c.s + o;
    const real *restrict m = hm + o, *restrict h = hc + o;
    real *restrict out = hn + o;
#pragma omp simd
    for (long i = 0; i < n; i++)
        out[i] = s[i] + a0[i] * m[i] + a1[i] * h[i] + cE[i] * h[i + 1] + cW[i] * h[i - 1] + cN[i] * h[i + Wp] +
                 cS[i] * h[i - Wp];
    fill_halo(q, hn);
}

static real *alloc_real(long n) { return (real *)calloc((size_t)(n > 0 ? n : 1), sizeof(real)); }

/* u = bu + wu (*) x and v = bv + wv (*) x into the padded planes du, dv: two depthwise k x k correlations
 * of one plane with zero padding k / 2 (what nn.Conv2d computes), in one pass. The plane is copied into a
 * zero-padded scratch of row stride Wk = W + 2r, so every tap is one long branch-free loop over H * Wk
 * points (the Wk - W extra columns per row are computed and dropped): short rows (7, 14) still vectorise. */
static void dwconv2_plane(const params *q, const real *restrict x, const real *restrict wu, real bu,
                          const real *restrict wv, real bv, int ks, real *restrict pad, real *restrict tu,
                          real *restrict tv, real *restrict du, real *restrict dv) {
    const long H = q->H, W = q->W, r = ks / 2, Wk = W + 2 * r, Hk = H + 2 * r;
    memset(pad, 0, sizeof(real) * Hk * Wk);
    for (long y = 0; y < H; y++) memcpy(pad + (y + r) * Wk + r, x + y * W, sizeof(real) * W);
    const long n = (H - 1) * Wk + W; /* the last output point needed, plus one */
    for (long i = 0; i < n; i++) {
        tu[i] = bu;
        tv[i] = bv;
    }
    for (long ky = 0; ky < ks; ky++) {
        for (long kx = 0; kx < ks; kx++) {
            const real a = wu[ky * ks + kx], b = wv[ky * ks + kx];
            const real *restrict src = pad + ky * Wk + kx;
#pragma omp simd
            for (long i = 0; i < n; i++) {
                tu[i] += a * src[i];
                tv[i] += b * src[i];
            }
        }
    }
    for (long y = 0; y < H; y++) {
        memcpy(du + q->o0 + y * q->Wp, tu + y * Wk, sizeof(real) * W);
        memcpy(dv + q->o0 + y * q->Wp, tv + y * Wk, sizeof(real) * W);
    }
}

/* The padded raw inputs of plane p into the scratch c (velocities only if given as fields). */
static void load_plane(const params *q, coefs c, long p, field f, field u, field v, field Dx, field Dy) {
    const real *src[5] = {plane_of(f, p, q->C), plane_of(u, p, q->C), plane_of(v, p, q->C),
                          plane_of(Dx, p, q->C), plane_of(Dy, p, q->C)};
    real *dst[5] = {c.f, c.u, c.v, c.Dx, c.Dy};
    for (int i = 0; i < 5; i++)
        if (src[i]) pad_in(q, src[i], dst[i]);
}

/* The forward pass; with wu != NULL the velocities are not inputs but depthwise convolutions of the
 * initial state, computed here plane by plane (u = conv(H^0, wu[c]) + bu[c], v likewise), so the
 * inference path reads H^0 once for the convolutions and the K steps together. */
static void forward_impl(const real *init, long init_sn, long init_sc, field f, field u, field v, field Dx,
                         field Dy, const real *wu, const real *bu, const real *wv, const real *bv, int ks,
                         real *out, long P, long C, long H, long W, int K, double dt, double dx, double dy,
                         double dxc, double dyc, int boundary, double courant, double dmax, int nthreads) {
    const params q = make_params(H, W, C, K, boundary, dt, dx, dy, dxc, dyc, courant, dmax);
    const long S = q.S, HW = H * W;
    const int has_vel = u.ptr != NULL || wu != NULL;
#pragma omp parallel num_threads(nthreads)
    {
        real *buf = alloc_real((COEF_PLANES + 3) * S);
        coefs c = coefs_at(buf, S);
        real *lv[3] = {buf + COEF_PLANES * S, buf + (COEF_PLANES + 1) * S, buf + (COEF_PLANES + 2) * S};
        const long Wk = W + 2 * (ks / 2), Hk = H + 2 * (ks / 2);
        real *cbuf = wu ? alloc_real(Hk * Wk + 2 * H * Wk) : NULL; /* padded plane, two row-padded outputs */
#pragma omp for schedule(static)
        for (long p = 0; p < P; p++) {
            const real *h0 = init + (p / C) * init_sn + (p % C) * init_sc;
            real *dst = out + p * HW;
            if (K == 0) {
                memcpy(dst, h0, sizeof(real) * HW);
                continue;
            }
            load_plane(&q, c, p, f, u, v, Dx, Dy);
            if (wu) {
                const long ch = p % C;
                dwconv2_plane(&q, h0, wu + ch * ks * ks, bu[ch], wv + ch * ks * ks, bv[ch], ks, cbuf,
                              cbuf + Hk * Wk, cbuf + Hk * Wk + H * Wk, c.u, c.v);
            }
            compute_coefs(&q, c, f.ptr != NULL, has_vel, Dx.ptr != NULL);
            pad_in(&q, h0, lv[0]);
            fill_halo(&q, lv[0]);
            real *hm = lv[0], *hc = lv[0];
            for (int k = 0; k < K; k++) {
                real *hn = (k == 0) ? lv[1] : (hm != lv[0] && hc != lv[0]) ? lv[0] : (hm != lv[1] && hc != lv[1]) ? lv[1] : lv[2];
                step(&q, c, hm, hc, hn);
                hm = hc;
                hc = hn;
            }
            pad_out(&q, hc, dst);
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

/* One adjoint step. ln = lambda^{k+1} (plane values, halo 0); hk = H^k and hkm = H^{k-1} (halo filled).
 * Accumulates the coefficient gradients g, lp (lambda^{k-1}) += a0 ln, and lc (lambda^k) += the transposed
 * stencil applied to ln (over the wide span, then folded back onto the plane). */
static void adjoint_step(const params *q, coefs c, coefs g, const real *ln_, const real *hk_, const real *hkm_,
                         real *lc_, real *lp_) {
    const long o = q->o0, n = q->n, Wp = q->Wp;
    {
        const real *restrict l = ln_ + o, *restrict h = hk_ + o, *restrict hm = hkm_ + o, *restrict a0 = c.a0 + o;
        real *restrict ga0 = g.a0 + o, *restrict ga1 = g.a1 + o, *restrict gs = g.s + o, *restrict gE = g.cE + o;
        real *restrict gW = g.cW + o, *restrict gN = g.cN + o, *restrict gS = g.cS + o, *restrict lp = lp_ + o;
#pragma omp simd
        for (long i = 0; i < n; i++) {
            const real li = l[i];
            ga0[i] += li * hm[i];
            ga1[i] += li * h[i];
            gs[i] += li;
            gE[i] += li * h[i + 1];
            gW[i] += li * h[i - 1];
            gN[i] += li * h[i + Wp];
            gS[i] += li * h[i - Wp];
            lp[i] += a0[i] * li;
        }
    }
    {
        const long w = q->ow, nw = q->nw;
        const real *restrict l = ln_ + w, *restrict a1 = c.a1 + w, *restrict cE = c.cE + w, *restrict cW = c.cW + w;
        const real *restrict cN = c.cN + w, *restrict cS = c.cS + w;
        real *restrict lc = lc_ + w;
#pragma omp simd
        for (long i = 0; i < nw; i++)
            lc[i] += a1[i] * l[i] + cE[i - 1] * l[i - 1] + cW[i + 1] * l[i + 1] + cN[i - Wp] * l[i - Wp] +
                     cS[i + Wp] * l[i + Wp];
    }
    fold_halo(q, lc_);
}

void ad_backward(const real *gout, const real *init, long init_sn, long init_sc, field f, field u, field v,
                 field Dx, field Dy, real *ginit, real *gf, real *gu, real *gv, real *gDx, real *gDy, long P,
                 long C, long H, long W, int K, double dt, double dx, double dy, double dxc, double dyc,
                 int boundary, double courant, double dmax, int nthreads) {
    const params q = make_params(H, W, C, K, boundary, dt, dx, dy, dxc, dyc, courant, dmax);
    const long S = q.S, HW = H * W, o = q.o0, n = q.n, Wp = q.Wp;
    const double umax = courant > 0 ? courant * dx / dt : 0;
    const double vmax = courant > 0 ? courant * dy / dt : 0;
    const int has_vel = u.ptr != NULL;
#pragma omp parallel num_threads(nthreads)
    {
        /* coefficients and inputs, 7 coefficient-gradient planes, K + 1 states, 3 adjoint planes */
        real *buf = alloc_real((COEF_PLANES + 7 + (long)K + 1 + 3) * S);
        coefs c = coefs_at(buf, S);
        coefs g = coefs_at(buf + COEF_PLANES * S, S); /* only its first 7 planes (a0 .. s) are used */
        real *gbuf = buf + COEF_PLANES * S;
        real *states = buf + (COEF_PLANES + 7) * S; /* states + k * S = H^k, k = 0..K */
        real *lam = states + ((long)K + 1) * S;
#pragma omp for schedule(static)
        for (long p = 0; p < P; p++) {
            const real *h0 = init + (p / C) * init_sn + (p % C) * init_sc;
            const real *go = gout + p * HW;
            if (K == 0) {
                if (ginit) memcpy(ginit + p * HW, go, sizeof(real) * HW);
                if (gf) memset(gf + p * HW, 0, sizeof(real) * HW);
                if (gu) memset(gu + p * HW, 0, sizeof(real) * HW);
                if (gv) memset(gv + p * HW, 0, sizeof(real) * HW);
                if (gDx) memset(gDx + p * HW, 0, sizeof(real) * HW);
                if (gDy) memset(gDy + p * HW, 0, sizeof(real) * HW);
                continue;
            }
            load_plane(&q, c, p, f, u, v, Dx, Dy);
            compute_coefs(&q, c, f.ptr != NULL, has_vel, Dx.ptr != NULL);
            pad_in(&q, h0, states);
            fill_halo(&q, states);
            for (int k = 0; k < K; k++)
                step(&q, c, states + (k > 0 ? k - 1 : 0) * S, states + k * S, states + (k + 1) * S);
            memset(gbuf, 0, sizeof(real) * 7 * S);
            memset(lam, 0, sizeof(real) * 3 * S);
            /* adjoints: ln = lambda^{k+1}, lc = lambda^k, lp = lambda^{k-1} */
            real *ln = lam, *lc = lam + S, *lp = lam + 2 * S;
            pad_in(&q, go, ln);
            for (int k = K - 1; k >= 0; k--) {
                adjoint_step(&q, c, g, ln, states + k * S, states + (k > 0 ? k - 1 : 0) * S, lc, lp);
                /* rotate: lambda^{k+1} is done; the next step needs lambda^k (complete) and lambda^{k-1} */
                real *t = ln;
                ln = lc;
                lc = lp;
                lp = t;
                memset(lp, 0, sizeof(real) * S);
            }
            /* now ln = lambda^0 and lc = lambda^{-1}; H^{-1} = H^0 = init */
            if (ginit) {
                real *gi = ginit + p * HW;
                for (long y = 0; y < H; y++)
                    for (long x = 0; x < W; x++) gi[y * W + x] = ln[o + y * Wp + x] + lc[o + y * Wp + x];
            }
            /* chain rule from the coefficients to source, velocity and diffusion. Pass 1 (per element):
             * afterwards g.a1 holds d/d(u_x + v_y), g.cE d/d(bounded u) and g.cN d/d(bounded v) of the
             * direct (non-derivative) terms; g.s d/df, g.cW d/dDx, g.cS d/dDy */
            const real kx = (real)(dt / (dx * dx)), ky = (real)(dt / (dy * dy)), two_dt = (real)(2 * dt);
            const real dm = (real)(dmax > 0 ? dmax : 1e30), m2dt = (real)(-2 * dt);
            const real adx = (real)(dt / dx), ady = (real)(dt / dy);
            const real cdx = (real)dxc, cdy = (real)dyc;
            const real dmc = Dx.ptr ? dm : (real)1e30; /* a constant diffusion is not clamped */
            if (Dx.ptr == NULL) { /* constant diffusion: the same loop below reads it from the scratch */
                for (long i = 0; i < n; i++) {
                    c.Dx[o + i] = cdx;
                    c.Dy[o + i] = cdy;
                }
            }
            {
                const real *restrict dxp = c.Dx + o, *restrict dyp = c.Dy + o;
                const real *restrict ca0 = c.a0 + o, *restrict ca1 = c.a1 + o, *restrict cE = c.cE + o;
                const real *restrict cW = c.cW + o, *restrict cN = c.cN + o, *restrict cS = c.cS + o;
                const real *restrict cs = c.s + o;
                real *restrict ga0 = g.a0 + o, *restrict ga1 = g.a1 + o, *restrict gE = g.cE + o;
                real *restrict gW = g.cW + o, *restrict gN = g.cN + o, *restrict gS = g.cS + o, *restrict gs = g.s + o;
#pragma omp simd
                for (long i = 0; i < n; i++) {
                    real dxv = CLAMP(dxp[i], (real)0, dmc), dyv = CLAMP(dyp[i], (real)0, dmc);
                    real iL = (real)1 / ((real)1 + 2 * dxv * kx + 2 * dyv * ky);
                    real T = ga0[i] * ca0[i] + ga1[i] * ca1[i] + gE[i] * cE[i] + gW[i] * cW[i] + gN[i] * cN[i] +
                             gS[i] * cS[i] + gs[i] * cs[i];
                    real passx = (dxp[i] >= 0 && dxp[i] <= dm) ? (real)1 : (real)0;
                    real passy = (dyp[i] >= 0 && dyp[i] <= dm) ? (real)1 : (real)0;
                    real gdx = (2 * (gE[i] + gW[i] - ga0[i]) - 2 * T) * iL * kx * passx;
                    real gdy = (2 * (gN[i] + gS[i] - ga0[i]) - 2 * T) * iL * ky * passy;
                    real gdiv = ga1[i] * m2dt * iL;
                    real gub = (gW[i] - gE[i]) * iL * adx;
                    real gvb = (gS[i] - gN[i]) * iL * ady;
                    gs[i] = gs[i] * two_dt * iL;
                    gW[i] = gdx;
                    gS[i] = gdy;
                    ga1[i] = gdiv;
                    gE[i] = gub;
                    gN[i] = gvb;
                }
            }
            if (gf) pad_out(&q, g.s, gf + p * HW);
            if (gDx) pad_out(&q, g.cW, gDx + p * HW);
            if (gDy) pad_out(&q, g.cS, gDy + p * HW);
            if (gu || gv) {
                /* pass 2: the central differences' transposes (div[i] has +u[i+1], -u[i-1], +v[i+Wp],
                 * -v[i-Wp]) over the wide span, folded back onto the plane: d/d(bounded u), d/d(bounded v) */
                zero_halo_cols(&q, g.a1);
                zero_halo_cols(&q, g.cE);
                zero_halo_cols(&q, g.cN);
                const real hx = (real)(0.5 / dx), hy = (real)(0.5 / dy);
                const long w = q.ow, nw = q.nw;
                const real *restrict gdiv = g.a1 + w;
                real *restrict gub = g.cE + w, *restrict gvb = g.cN + w;
#pragma omp simd
                for (long i = 0; i < nw; i++) {
                    gub[i] += hx * (gdiv[i - 1] - gdiv[i + 1]);
                    gvb[i] += hy * (gdiv[i - Wp] - gdiv[i + Wp]);
                }
                fold_halo(&q, g.cE);
                fold_halo(&q, g.cN);
                /* pass 3: through the velocity bound, d bound / du = (1 + (u / umax)^2)^(-3/2) */
                const real ru = (real)(umax > 0 ? 1 / umax : 0), rv = (real)(vmax > 0 ? 1 / vmax : 0);
                const real *restrict up = c.u + o, *restrict vp = c.v + o;
                real *restrict du = g.cE + o, *restrict dv = g.cN + o;
#pragma omp simd
                for (long i = 0; i < n; i++) {
                    real tu = up[i] * ru, r = (real)1 / SQRT((real)1 + tu * tu);
                    real tv = vp[i] * rv, s = (real)1 / SQRT((real)1 + tv * tv);
                    du[i] *= r * r * r;
                    dv[i] *= s * s * s;
                }
                if (gu) pad_out(&q, g.cE, gu + p * HW);
                if (gv) pad_out(&q, g.cN, gv + p * HW);
            }
        }
        free(buf);
    }
}
