/* Fused Du Fort-Frankel advection-diffusion solver (Eq. 4 of "Condensing CNNs with PDEs").
 *
 * Work unit: a block of L channels of one sample ("lanes"; L = 1 for large planes, up to 64 bytes of
 * channels for small ones). Its coefficients and time levels stay in a per-thread scratch that fits in
 * cache, so the K steps cost one read of the inputs and one write of the output instead of ~7 passes
 * over memory per step. The backward pass recomputes the K states of a block in scratch (nothing is
 * stored between forward and backward) and runs the adjoint recursion. Compiled twice: -DREAL=float and
 * -DREAL=double.
 *
 * Scratch layout ("padded block"): element (y, x, lane) of the block sits at ((y + 2) Wp + x + 1) L + lane
 * with Wp = W + 2: a one-element halo around the plane, rows 0 and H + 3 zero so that every +-Wp access of
 * a halo element is in bounds. Before a stencil reads a state, its halo is filled from the plane by the
 * boundary rule (periodic: wrapped, replicate: the edge, zero: 0), so every step, and every adjoint step,
 * is ONE branch-free loop over all points from the first to the last plane element (the halo columns in
 * between are computed with zero coefficients and dropped), with neighbours at +-L (x) and +-Wp L (y).
 * That vectorises even for 7 x 7 planes, and lanes make a 7 x 7 plane 16 floats wide. The adjoint of the
 * halo fill ("fold") adds halo values back onto the plane elements they were copied from.
 *
 * Tensor arguments are 4-D strided arrays (field: pointer and the strides of N, C, H, W), so contiguous
 * (NCHW) and channels-last (NHWC) tensors are both read and written in place. A NULL field means: source
 * 0, velocity 0, or constant diffusion (dxc, dyc). Boundary: 0 periodic, 1 replicate, 2 zero.
 * Bounds: courant > 0 maps u -> u / sqrt(1 + (u / umax)^2) with umax = courant * dx / dt (v likewise, dy);
 * dmax > 0 maps D -> clamp(D, 0, dmax).
 */
#define _POSIX_C_SOURCE 200112L /* posix_memalign under -std=c11 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#ifndef REAL
#define REAL float
#endif
typedef REAL real;

typedef struct {
    const real *ptr;
    long sn, sc, sy, sx;
} field;

/* one 64-byte vector of values (GCC/Clang vector extension: AVX-512 registers where the CPU has them) */
typedef real vec __attribute__((vector_size(64)));
typedef real vec_u __attribute__((vector_size(64), aligned(sizeof(real)), may_alias));
#define VL ((long)(64 / sizeof(real)))

static inline vec vld(const real *p) { return *(const vec_u *)p; }
static inline void vst(real *p, vec v) { *(vec_u *)p = v; }
/* the first m < VL values (the channel tail) */
static inline vec vld_n(const real *p, long m) {
    vec v = {0};
    memcpy(&v, p, (size_t)m * sizeof(real));
    return v;
}
static inline void vst_n(real *p, vec v, long m) { memcpy(p, &v, (size_t)m * sizeof(real)); }
static inline vec vld_m(const real *p, long m) { return m == VL ? vld(p) : vld_n(p, m); }

/* 1: the kernels as they were before the inference path was fused (issue 25): NCHW planes one at a time,
 * the generic coefficient passes, scratch cleared on every call. Only for side-by-side benchmarks
 * (``condense.pde._native.legacy_path``); the results are equal to rounding. */
int condense_legacy = 0;

typedef struct {
    long H, W, C;
    int K, boundary;
    double dt, dx, dy, dxc, dyc, courant, dmax;
    /* lanes per block, blocks per sample; padded geometry: row stride (in elements and in values), size,
     * offset and count of the plane span (first to last element), offset and count of the wide span
     * (first to last halo element), all in values */
    long L, nb, Wp, dY, S, o0, n, ow, nw;
    long G; /* > 0: channels-last maps are staged G channels at a time into contiguous planes (L = 1) */
    int M;  /* 1: channels-last lane blocks are staged a whole sample at a time, block-major */
} params;

#define MAX_LANES ((long)(64 / sizeof(real)))
#define MIN_LANES ((long)(16 / sizeof(real)))
#define LANE_PLANE_VALUES 65536L /* lanes up to this padded block size: 16 float lanes of 56 x 56 */
#define BLOCKS_PER_THREAD 8
#ifndef NCHW_LANES_MAX_HW
#define NCHW_LANES_MAX_HW 1024L /* NCHW planes up to 32 x 32 are solved in lanes too */
#endif
#ifndef NCHW_LANE_VALUES
#define NCHW_LANE_VALUES 65536L
#endif
/* a map of fewer values than this per thread (batch-1 inference) is solved in blocks of at most
 * NCHW_SMALL_LANE_VALUES per plane: its scratch is cold at every call (the model's convolutions evicted it),
 * and small blocks reuse one small scratch (resnet20 @50%, batch 1: 16 lanes of 32 x 32 0.64 of the
 * original's time, 4 lanes 0.57; batch 32: 0.58 and 0.61) */
#define NCHW_SMALL_MAP 65536L
#define NCHW_SMALL_LANE_VALUES 5120L
#ifndef NCHW_BLOCKS_PER_THREAD
#define NCHW_BLOCKS_PER_THREAD 1
#endif
#ifndef MIN_WORK_PER_THREAD
#define MIN_WORK_PER_THREAD 32768L /* values x (K + 4): below this per thread, fewer threads */
#endif
#ifndef DW_NCHW_LANES
#define DW_NCHW_LANES 1
#endif

/* Layouts. NCHW maps with planes up to 32 x 32 are solved in lanes like channels-last ones (below): a block
 * gathers up to 16 channels' planes (16 x 16 tiles transposed in registers), so a 8 x 8 plane is 16 floats
 * wide instead of half a vector per row, and the per-block costs (halo fills, weight vectors, loop set-up)
 * are paid once per 16 channels (CIFAR ResNet shapes, K = 5, inference: 0.3-0.6 of the time per plane;
 * training 0.8-1.0). Larger NCHW planes are solved one at a time (rows are contiguous; gathering them
 * measured slower than the per-plane overhead it removes). Channels-last maps (channels contiguous)
 * are solved in blocks of L channel lanes, L the largest power of two <= C up to a cache line (64 bytes),
 * so every pixel read is a full cache line: fewer lanes per block read each line several times and
 * measured slower (8 x 256 x 56 x 56, K = 5, forward + backward with source and velocity: 16 lanes
 * 158 ms, staged groups as below 232 ms, NCHW 104 ms). Planes too large for that many lanes (padded block > LANE_PLANE_VALUES, e.g. 112 x 112) are
 * staged instead: a group of a cache line of channels is transposed into contiguous planes, solved plane
 * by plane like NCHW, and transposed back.
 * Small batches of few channels (batch 1 inference) have too few blocks of a cache line for the threads, and
 * a block's planes are 16 times those of NCHW: there the lanes narrow, down to 16 bytes, until every thread
 * has BLOCKS_PER_THREAD blocks; and a power-of-two divisor of C of at least 16 bytes replaces a width that
 * would leave a partial block (batch 1, K = 5, inference: 24 x 56 x 56 0.99 -> 0.65 ms, 40 x 28 x 28
 * 0.59 -> 0.38 ms; NCHW 0.45 and 0.31 ms).
 * With at least two samples per thread (training, batched inference) and no partial block, a thread
 * stages a whole sample block-major first (sample_in), reading each pixel's C channels contiguously, so
 * that each block then reads contiguous memory (8 x 256 x 56 x 56, K = 5, source = init, velocity:
 * forward 27.8 -> 22.2 ms, backward 80 -> 70 ms; in a compiled resnet50 training step within noise). */
static params make_params(long H, long W, long N, long C, int K, int boundary, double dt, double dx, double dy,
                          double dxc, double dyc, double courant, double dmax, field layout, int nthreads,
                          int nchw_lanes) {
    params q = {H, W, C, K, boundary, dt, dx, dy, dxc, dyc, courant, dmax, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    const long plane = (H + 4) * (W + 2);
    if (nchw_lanes && !condense_legacy && layout.sx == 1 && layout.sc != 1 && C > 1 && H * W <= NCHW_LANES_MAX_HW) {
        /* small NCHW planes: lanes as well, gathered from the channels' planes (see above) */
        const long cap = N * C * H * W < NCHW_SMALL_MAP * nthreads ? NCHW_SMALL_LANE_VALUES : NCHW_LANE_VALUES;
        long lanes = 1;
        while (lanes * 2 <= MAX_LANES && lanes * 2 <= C && (lanes * 2) * plane <= cap) lanes *= 2;
        while (lanes > MIN_LANES && N * ((C + lanes - 1) / lanes) < (long)NCHW_BLOCKS_PER_THREAD * nthreads)
            lanes /= 2;
        long d = lanes;
        while (d > 1 && C % d) d /= 2;
        q.L = d >= MIN_LANES ? d : lanes;
    } else if (layout.sc == 1 && C > 1) { /* channels-last */
        long lanes = 1;
        while (lanes * 2 <= MAX_LANES && lanes * 2 <= C) lanes *= 2;
        if (lanes * plane <= LANE_PLANE_VALUES) {
            while (lanes > MIN_LANES && N * ((C + lanes - 1) / lanes) < (long)BLOCKS_PER_THREAD * nthreads)
                lanes /= 2;
            long d = lanes;
            while (d > 1 && C % d) d /= 2;
            q.L = d >= MIN_LANES ? d : lanes;
            q.M = q.L > 1 && C % q.L == 0 && N >= 2L * nthreads;
        } else {
            q.G = MAX_LANES;
        }
    }
    q.nb = (C + q.L - 1) / q.L;
    q.Wp = W + 2;
    q.dY = q.Wp * q.L;
    q.S = plane * q.L;
    q.o0 = (2 * q.Wp + 1) * q.L;
    q.n = ((H - 1) * q.Wp + W) * q.L;
    q.ow = q.Wp * q.L;
    q.nw = (H + 2) * q.Wp * q.L;
    return q;
}

/* block p = (sample p / nb, channels from (p % nb) L): its first value in a field, and its lane count */
static inline long block_lanes(const params *q, long p) {
    const long c0 = (p % q->nb) * q->L;
    return q->C - c0 < q->L ? q->C - c0 : q->L;
}
static inline const real *block_of(field f, const params *q, long p) {
    return f.ptr ? f.ptr + (p / q->nb) * f.sn + (p % q->nb) * q->L * f.sc : NULL;
}

/* the same tensor view: the source is often the initial state itself (f = I = H^0), read once then */
static inline int same_field(field a, field b) {
    return a.ptr && a.ptr == b.ptr && a.sn == b.sn && a.sc == b.sc && a.sy == b.sy && a.sx == b.sx;
}

/* L values (one pixel of a block); constant sizes so the copy is inlined as vector moves, not a call */
static inline void copy_lanes(real *restrict dst, const real *restrict src, long L) {
    switch (L) {
    case 1: dst[0] = src[0]; break;
    case 2: memcpy(dst, src, 2 * sizeof(real)); break;
    case 4: memcpy(dst, src, 4 * sizeof(real)); break;
    case 8: memcpy(dst, src, 8 * sizeof(real)); break;
    case 16: memcpy(dst, src, 16 * sizeof(real)); break;
    default: memcpy(dst, src, (size_t)L * sizeof(real));
    }
}

/* BODY with the lane count LL a compile-time constant (L = 1, 2, 4, 8 or MAX_LANES), so lane loops are
 * one or two vector operations */
#define WITH_LANES(L, ...)                                                                                  \
    switch (L) {                                                                                            \
    case 1: { const long LL = 1; __VA_ARGS__ } break;                                                       \
    case 2: { const long LL = 2; __VA_ARGS__ } break;                                                       \
    case 4: { const long LL = 4; __VA_ARGS__ } break;                                                       \
    case 8: { const long LL = 8; __VA_ARGS__ } break;                                                       \
    default: { const long LL = MAX_LANES; __VA_ARGS__ } break;                                              \
    }

/* Channels of NCHW-like planes (rows contiguous: sx = 1) <-> lane-interleaved rows (value x L + l of row y
 * at dst + y ds): one channel's row at a time, contiguous reads and stores L values apart (lanes beyond
 * ``lanes``: 0) */
#if defined(__AVX512F__)
/* r[i][j] <- r[j][i] for 16 vectors of 16 floats, in registers (unpack, in-lane shuffles, then 128-bit
 * block shuffles): 64 shuffles per 256 values instead of 256 scalar moves */
static inline __attribute__((always_inline)) void transpose16(__m512 *r) {
    __m512 t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) {
        r[4 * i + 0] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
        r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    for (int j = 0; j < 4; j++) {
        t[j] = _mm512_shuffle_f32x4(r[j], r[4 + j], 0x88);
        t[4 + j] = _mm512_shuffle_f32x4(r[j], r[4 + j], 0xDD);
        t[8 + j] = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0x88);
        t[12 + j] = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0xDD);
    }
    for (int j = 0; j < 4; j++) {
        r[j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0x88);
        r[8 + j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0xDD);
        r[4 + j] = _mm512_shuffle_f32x4(t[4 + j], t[12 + j], 0x88);
        r[12 + j] = _mm512_shuffle_f32x4(t[4 + j], t[12 + j], 0xDD);
    }
}
#define HAVE_TRANSPOSE 1
#endif

static void lanes_in(const real *restrict src, long sc, long sy, long H, long W, long lanes, long L,
                     real *restrict dst, long ds) {
#ifdef HAVE_TRANSPOSE
    if (sizeof(real) == 4 && L == 16) { /* 16 float lanes: 16 x 16 tiles transposed in registers */
        for (long y = 0; y < H; y++) {
            float *d = (float *)dst + y * ds;
            for (long x = 0; x < W; x += 16) {
                const long m = W - x < 16 ? W - x : 16;
                const __mmask16 k = (__mmask16)((1u << m) - 1);
                __m512 r[16];
                for (long l = 0; l < 16; l++)
                    r[l] = l < lanes ? _mm512_maskz_loadu_ps(k, (const float *)src + l * sc + y * sy + x)
                                     : _mm512_setzero_ps();
                transpose16(r);
                for (long j = 0; j < m; j++) _mm512_storeu_ps(d + (x + j) * 16, r[j]);
            }
        }
        return;
    }
#endif
    WITH_LANES(L, for (long y = 0; y < H; y++) {
        real *d = dst + y * ds;
        for (long l = 0; l < lanes; l++) {
            const real *restrict row = src + l * sc + y * sy;
            for (long x = 0; x < W; x++) d[x * LL + l] = row[x];
        }
        for (long l = lanes; l < LL; l++)
            for (long x = 0; x < W; x++) d[x * LL + l] = 0;
    })
}
static void lanes_out(const real *restrict src, long ds, long H, long W, long lanes, long L, real *restrict dst,
                      long sc, long sy) {
#ifdef HAVE_TRANSPOSE
    if (sizeof(real) == 4 && L == 16) {
        for (long y = 0; y < H; y++) {
            const float *s = (const float *)src + y * ds;
            for (long x = 0; x < W; x += 16) {
                const long m = W - x < 16 ? W - x : 16;
                const __mmask16 k = (__mmask16)((1u << m) - 1);
                __m512 r[16];
                for (long j = 0; j < 16; j++) r[j] = j < m ? _mm512_loadu_ps(s + (x + j) * 16) : _mm512_setzero_ps();
                transpose16(r);
                for (long l = 0; l < lanes; l++) _mm512_mask_storeu_ps((float *)dst + l * sc + y * sy + x, k, r[l]);
            }
        }
        return;
    }
#endif
    WITH_LANES(L, for (long y = 0; y < H; y++) {
        const real *s = src + y * ds;
        for (long l = 0; l < lanes; l++) {
            real *restrict row = dst + l * sc + y * sy;
            for (long x = 0; x < W; x++) row[x] = s[x * LL + l];
        }
    })
}

/* a block of a strided tensor <-> the padded block's plane (lanes beyond the block's channels: 0) */
static void pad_in(const params *q, field f, const real *restrict src, long lanes, real *restrict dst) {
    const long H = q->H, W = q->W, L = q->L;
    real *first = dst + q->o0;
    if (L == 1 && f.sx == 1) {
        for (long y = 0; y < H; y++) memcpy(first + y * q->dY, src + y * f.sy, sizeof(real) * W);
    } else if (f.sc == 1 && lanes == L) {
        for (long y = 0; y < H; y++)
            for (long x = 0; x < W; x++) copy_lanes(first + y * q->dY + x * L, src + y * f.sy + x * f.sx, L);
    } else if (f.sx == 1) {
        lanes_in(src, f.sc, f.sy, H, W, lanes, L, first, q->dY);
    } else {
        for (long y = 0; y < H; y++)
            for (long x = 0; x < W; x++) {
                real *d = first + y * q->dY + x * L;
                const real *s = src + y * f.sy + x * f.sx;
                for (long l = 0; l < lanes; l++) d[l] = s[l * f.sc];
                for (long l = lanes; l < L; l++) d[l] = 0;
            }
    }
}
static void pad_out(const params *q, const real *restrict src, field f, real *restrict dst, long lanes) {
    const long H = q->H, W = q->W, L = q->L;
    const real *first = src + q->o0;
    if (L == 1 && f.sx == 1) {
        for (long y = 0; y < H; y++) memcpy(dst + y * f.sy, first + y * q->dY, sizeof(real) * W);
    } else if (f.sc == 1 && lanes == L) {
        for (long y = 0; y < H; y++)
            for (long x = 0; x < W; x++) copy_lanes(dst + y * f.sy + x * f.sx, first + y * q->dY + x * L, L);
    } else if (f.sx == 1) {
        lanes_out(first, q->dY, H, W, lanes, L, dst, f.sc, f.sy);
    } else {
        for (long y = 0; y < H; y++)
            for (long x = 0; x < W; x++) {
                real *d = dst + y * f.sy + x * f.sx;
                const real *s = first + y * q->dY + x * L;
                for (long l = 0; l < lanes; l++) d[l * f.sc] = s[l];
            }
    }
}

/* the halo of a padded block from its plane, by the boundary rule: columns first, then the two halo rows
 * are copied whole (their corners are never read by the 5-point stencil) */
static void fill_halo(const params *q, real *h) {
    const long H = q->H, W = q->W, L = q->L, dY = q->dY;
    real *first = h + q->o0, *last = first + (H - 1) * dY;
    if (L == 1) { /* the common case (large NCHW planes): plain element copies */
        for (long y = 0; y < H; y++) {
            real *row = first + y * dY;
            row[-1] = q->boundary == 0 ? row[W - 1] : q->boundary == 1 ? row[0] : 0;
            row[W] = q->boundary == 0 ? row[0] : q->boundary == 1 ? row[W - 1] : 0;
        }
    } else {
        for (long y = 0; y < H; y++) {
            real *row = first + y * dY;
            if (q->boundary == 0) {
                copy_lanes(row - L, row + (W - 1) * L, L);
                copy_lanes(row + W * L, row, L);
            } else if (q->boundary == 1) {
                copy_lanes(row - L, row, L);
                copy_lanes(row + W * L, row + (W - 1) * L, L);
            } else {
                for (long l = 0; l < L; l++) row[l - L] = row[W * L + l] = 0;
            }
        }
    }
    if (q->boundary == 0) {
        memcpy(first - dY - L, last - L, sizeof(real) * dY);
        memcpy(last + dY - L, first - L, sizeof(real) * dY);
    } else if (q->boundary == 1) {
        memcpy(first - dY - L, first - L, sizeof(real) * dY);
        memcpy(last + dY - L, last - L, sizeof(real) * dY);
    } else {
        memset(first - dY - L, 0, sizeof(real) * dY);
        memset(last + dY - L, 0, sizeof(real) * dY);
    }
}

/* the adjoint of fill_halo: add every halo value onto the element it was copied from (rows first, then
 * columns: the reverse order), then zero the halo */
static void fold_halo(const params *q, real *g) {
    const long H = q->H, W = q->W, L = q->L, dY = q->dY;
    real *first = g + q->o0, *last = first + (H - 1) * dY;
    real *top = first - dY - L, *bottom = last + dY - L;
    if (q->boundary != 2) {
        real *to_top = q->boundary == 0 ? last - L : first - L, *to_bottom = q->boundary == 0 ? first - L : last - L;
        for (long x = 0; x < dY; x++) to_top[x] += top[x];
        for (long x = 0; x < dY; x++) to_bottom[x] += bottom[x];
    }
    memset(top, 0, sizeof(real) * dY);
    memset(bottom, 0, sizeof(real) * dY);
    for (long y = 0; y < H; y++) {
        real *row = first + y * dY, *left = row - L, *right = row + W * L;
        real *to_left = q->boundary == 0 ? row + (W - 1) * L : row, *to_right = q->boundary == 0 ? row : row + (W - 1) * L;
        for (long l = 0; l < L; l++) {
            if (q->boundary != 2) {
                to_left[l] += left[l];
                to_right[l] += right[l];
            }
            left[l] = right[l] = 0;
        }
    }
}

/* zero the halo columns inside the plane span (after a flat loop wrote them) */
static void zero_halo_cols(const params *q, real *a) {
    real *first = a + q->o0;
    const long L = q->L, right = q->W * L;
    for (long y = 0; y < q->H; y++) {
        real *row = first + y * q->dY;
        for (long l = 0; l < L; l++) row[l - L] = row[right + l] = 0;
    }
}

/* Coefficients of H^{k+1} = a0 H^{k-1} + a1 H^k + tx (H[x+1] + H[x-1]) + ty (H[y+1] + H[y-1])
 *                          - ax (H[x+1] - H[x-1]) - ay (H[y+1] - H[y-1]) + s
 * (a0 = M / L, tx = 2 Bx / L, ty = 2 By / L, a1 = -2 dt (u_x + v_y) / L, ax = Ax / L, ay = Ay / L,
 * s = 2 dt f / L), plus the padded raw inputs and bounded velocities the backward pass reuses. All padded
 * planes. With constant diffusion a0, tx and ty are constants (``consts``), so a step streams 4
 * coefficient planes instead of 7. */
typedef struct {
    real *a0, *a1, *tx, *ty, *ax, *ay, *s;
    real *Dx, *Dy;             /* raw diffusion, padded (halo 0) */
    /* aliases: the raw inputs f, u, v are loaded into s, ax and ay and turned into them in place (u via
     * the bounded velocity ub, halo filled), so a block's working set is 9 planes, not 14 (the planes of
     * a 16-lane block are large: 8 x 256 x 56 x 56 channels-last backward 114 -> 91 ms) */
    real *f, *u, *v, *ub, *vb;
    int var_d;                 /* a0, tx, ty are planes (1) or the constants below (0) */
    real a0c, txc, tyc;
} coefs;
#define COEF_PLANES 9

static coefs coefs_at(real *buf, long S) {
    coefs c;
    real **slots[COEF_PLANES] = {&c.a0, &c.a1, &c.tx, &c.ty, &c.ax, &c.ay, &c.s, &c.Dx, &c.Dy};
    for (int i = 0; i < COEF_PLANES; i++) *slots[i] = buf + i * S;
    c.f = c.s;
    c.u = c.ub = c.ax;
    c.v = c.vb = c.ay;
    c.var_d = 0;
    c.a0c = c.txc = c.tyc = 0;
    return c;
}

#define SQRT(x) (sizeof(real) == sizeof(float) ? (real)sqrtf((float)(x)) : (real)sqrt((double)(x)))
#define CLAMP(x, lo, hi) ((x) < (lo) ? (lo) : ((x) > (hi) ? (hi) : (x)))

/* The velocity bound b = u / sqrt(1 + (u r)^2) of n values in place. With AVX-512, a vector at a time
 * from the 14-bit reciprocal square root estimate refined by Newton steps (one for float: relative error
 * ~2^-27, below float rounding; two for double, ~2^-53), a fraction of the cost of a square root and a
 * division (5-18% of a batch-1 inference call). Where 1 + (u r)^2 overflows the result is u / inf = 0,
 * as the exact expression gives. The tail (fewer than a vector) and other CPUs use the exact form. */
#if defined(__AVX512F__)
static inline vec vbound(vec u, real r) {
    const vec t = u * r, x = 1 + t * t;
    vec y;
    if (sizeof(real) == sizeof(float)) {
        __m512 a;
        memcpy(&a, &x, sizeof a);
        a = _mm512_rsqrt14_ps(a);
        memcpy(&y, &a, sizeof y);
    } else {
        __m512d a;
        memcpy(&a, &x, sizeof a);
        a = _mm512_rsqrt14_pd(a);
        memcpy(&y, &a, sizeof y);
    }
    const vec h = x * (real)0.5;
    y = y * ((real)1.5 - h * y * y);
    if (sizeof(real) == sizeof(double)) y = y * ((real)1.5 - h * y * y);
    const __typeof__(x < x) finite = x < (real)INFINITY; /* all ones where finite, else 0 */
    y = (vec)((__typeof__(finite))y & finite);
    return u * y;
}
#else
static inline vec vbound(vec u, real r) {
    for (long e = 0; e < VL; e++) {
        const real t = u[e] * r;
        u[e] = u[e] / SQRT((real)1 + t * t);
    }
    return u;
}
#endif

static void bound_velocity(real *restrict u, long n, real r) {
    long i = 0;
#if defined(__AVX512F__)
    for (; i + VL <= n; i += VL) vst(u + i, vbound(vld(u + i), r));
#endif
#pragma omp simd
    for (long j = i; j < n; j++) {
        const real t = u[j] * r;
        u[j] = u[j] / SQRT((real)1 + t * t);
    }
}

/* The coefficients of one plane from its padded raw inputs (c->f, c->u, c->v, c->Dx, c->Dy; flags say
 * which are present). The velocity bound u / sqrt(1 + (u / umax)^2) is the identity near 0,
 * |result| < umax, smooth, and cheap to vectorise. Every loop is one flat loop over the plane span; 1/L
 * is kept in ``iLp`` (a plane, or its constant value). */
static void compute_coefs(const params *q, coefs *c, int has_f, int has_vel, int has_d) {
    const long o = q->o0, n = q->n, L = q->L, dY = q->dY;
    const real kx = (real)(q->dt / (q->dx * q->dx)), ky = (real)(q->dt / (q->dy * q->dy));
    const real two_dt = (real)(2 * q->dt);
    /* ax and ay (aliases of ub, vb) are addressed in the blocks that use them */
    real *restrict a0 = c->a0 + o, *restrict a1 = c->a1 + o, *restrict tx = c->tx + o, *restrict ty = c->ty + o;
    real *restrict s = c->s + o;
    const real iLc = (real)1 / ((real)1 + 2 * (real)q->dxc * kx + 2 * (real)q->dyc * ky); /* constant diffusion */
    c->var_d = has_d;
    /* iL per element: in a1 for now (the advection pass turns it into a1) */
    if (has_d) {
        const real dm = (real)(q->dmax > 0 ? q->dmax : 1e30);
        const real *restrict Dx = c->Dx + o, *restrict Dy = c->Dy + o;
#pragma omp simd
        for (long i = 0; i < n; i++) {
            real bx = CLAMP(Dx[i], (real)0, dm) * kx, by = CLAMP(Dy[i], (real)0, dm) * ky;
            real iL = (real)1 / ((real)1 + 2 * bx + 2 * by);
            a0[i] = ((real)1 - 2 * bx - 2 * by) * iL;
            a1[i] = iL;
            tx[i] = 2 * bx * iL;
            ty[i] = 2 * by * iL;
        }
    } else {
        const real bx = (real)q->dxc * kx, by = (real)q->dyc * ky, iL = iLc;
        c->a0c = ((real)1 - 2 * bx - 2 * by) * iL;
        c->txc = 2 * bx * iL;
        c->tyc = 2 * by * iL;
        for (long i = 0; i < n; i++) a1[i] = iL;
    }
    if (has_f) { /* f was loaded into s */
#pragma omp simd
        for (long i = 0; i < n; i++) s[i] *= two_dt * a1[i];
    } else {
        memset(s, 0, sizeof(real) * n);
    }
    if (!has_vel) {
        memset(a1, 0, sizeof(real) * n);
        memset(c->ax + o, 0, sizeof(real) * n);
        memset(c->ay + o, 0, sizeof(real) * n);
    } else {
        const double umax = q->courant > 0 ? q->courant * q->dx / q->dt : 0;
        const double vmax = q->courant > 0 ? q->courant * q->dy / q->dt : 0;
        if (umax > 0) { /* u and v were loaded into ub and vb: bound them in place */
            bound_velocity(c->ub + o, n, (real)(1 / umax));
            bound_velocity(c->vb + o, n, (real)(1 / vmax));
        }
        fill_halo(q, c->ub);
        fill_halo(q, c->vb);
        const real hx = (real)(0.5 / q->dx), hy = (real)(0.5 / q->dy);
        const real kax = (real)(q->dt / q->dx), kay = (real)(q->dt / q->dy), m2dt = (real)(-2 * q->dt);
        {
            const real *restrict ub = c->ub + o, *restrict vb = c->vb + o;
#pragma omp simd
            for (long i = 0; i < n; i++) {
                real div = (ub[i + L] - ub[i - L]) * hx + (vb[i + dY] - vb[i - dY]) * hy;
                a1[i] = m2dt * div * a1[i]; /* a1 held 1/L */
            }
        }
        /* then ax = ub dt/dx / L in place of ub (1/L = (a0 + 1) / 2, or the constant) */
        real *restrict ax = c->ax + o, *restrict ay = c->ay + o;
        if (has_d) {
#pragma omp simd
            for (long i = 0; i < n; i++) {
                real iL = (a0[i] + 1) * (real)0.5;
                ax[i] *= kax * iL;
                ay[i] *= kay * iL;
            }
        } else {
            const real fx = kax * iLc, fy = kay * iLc;
#pragma omp simd
            for (long i = 0; i < n; i++) {
                ax[i] *= fx;
                ay[i] *= fy;
            }
        }
    }
    real *all[7] = {c->a0, c->a1, c->tx, c->ty, c->ax, c->ay, c->s};
    for (int i = 0; i < 7; i++)
        if (has_d || (i != 0 && i != 2 && i != 3)) zero_halo_cols(q, all[i]);
}

/* hn = one Du Fort-Frankel step from (hm = H^{k-1}, hc = H^k, halo filled); fills hn's halo. */
static void step(const params *q, const coefs *c, const real *hm, const real *hc, real *hn) {
    const long o = q->o0, n = q->n, L = q->L, dY = q->dY;
    const real *restrict a1 = c->a1 + o, *restrict ax = c->ax + o, *restrict ay = c->ay + o, *restrict s = c->s + o;
    const real *restrict m = hm + o, *restrict h = hc + o;
    real *restrict out = hn + o;
    if (c->var_d) {
        const real *restrict a0 = c->a0 + o, *restrict tx = c->tx + o, *restrict ty = c->ty + o;
#pragma omp simd
        for (long i = 0; i < n; i++) {
            real e = h[i + L], w = h[i - L], nn = h[i + dY], ss = h[i - dY];
            out[i] = s[i] + a0[i] * m[i] + a1[i] * h[i] + tx[i] * (e + w) + ty[i] * (nn + ss) - ax[i] * (e - w) -
                     ay[i] * (nn - ss);
        }
    } else {
        const real a0 = c->a0c, tx = c->txc, ty = c->tyc;
#pragma omp simd
        for (long i = 0; i < n; i++) {
            real e = h[i + L], w = h[i - L], nn = h[i + dY], ss = h[i - dY];
            out[i] = s[i] + a0 * m[i] + a1[i] * h[i] + tx * (e + w) + ty * (nn + ss) - ax[i] * (e - w) -
                     ay[i] * (nn - ss);
        }
    }
    fill_halo(q, hn);
}

/* Per-thread scratch, kept between calls (OpenMP reuses its threads): a fresh calloc of a few MB per call
 * cost its page faults on every call (~1 ms per call at 56 x 56, more than a K = 1 solve). ``slot`` names
 * one of the buffers a thread uses at the same time; the buffer comes back zeroed. NULL if out of
 * memory. */
#define SCRATCH_SLOTS 2
#define OUT_OF_MEMORY(flag) _Pragma("omp atomic write") flag = 1
static _Thread_local real *scratch_buf[SCRATCH_SLOTS];
static _Thread_local long scratch_len[SCRATCH_SLOTS];

static real *scratch_raw(int slot, long n) { /* not zeroed */
    if (n < 1) n = 1;
    if (n > scratch_len[slot]) {
        free(scratch_buf[slot]);
        /* cache-line aligned: a 64-byte vector at any other offset straddles two lines, and malloc's
         * 16-byte alignment made a block's speed depend on where the buffer happened to land */
        void *buf = NULL;
        scratch_buf[slot] = posix_memalign(&buf, 64, (size_t)n * sizeof(real)) ? NULL : (real *)buf;
        scratch_len[slot] = scratch_buf[slot] ? n : 0;
    }
    return scratch_buf[slot];
}

/* zeroed when (re)allocated only: a buffer whose every value is written before it is read needs no clearing,
 * but fresh memory may hold any bit pattern (denormals are slow) */
static real *scratch_kept(int slot, long n) {
    const long had = scratch_len[slot];
    real *buf = scratch_raw(slot, n);
    if (buf && scratch_len[slot] != had) memset(buf, 0, (size_t)scratch_len[slot] * sizeof(real));
    return buf;
}

static real *scratch(int slot, long n) {
    real *buf = scratch_raw(slot, n);
    if (buf) memset(buf, 0, (size_t)(n < 1 ? 1 : n) * sizeof(real));
    return buf;
}

/* The padded raw inputs of block p into the scratch c (velocities only if given as fields); a source that
 * is the initial state (same_field) is copied from its padded block h0 instead of read again. */
static void load_block(const params *q, coefs c, long p, long lanes, field init, const real *h0, field f, field u,
                       field v, field Dx, field Dy) {
    const field fs[5] = {f, u, v, Dx, Dy};
    real *dst[5] = {c.f, c.u, c.v, c.Dx, c.Dy};
    for (int i = 0; i < 5; i++) {
        if (i == 0 && same_field(f, init))
            memcpy(c.f + q->o0, h0 + q->o0, sizeof(real) * q->n);
        else if (fs[i].ptr)
            pad_in(q, fs[i], block_of(fs[i], q, p), lanes, dst[i]);
    }
}

/* A block of a strided tensor (its first value at src) -> the zero-padded scratch of a k x k convolution:
 * (H + 2r) x Wk x L, Wk = W + 2r, lanes beyond the block's channels 0. */
static void conv_pad_block(const params *q, field f, const real *src, long lanes, long r, real *restrict pad) {
    const long H = q->H, W = q->W, L = q->L, Wk = W + 2 * r;
    memset(pad, 0, sizeof(real) * (H + 2 * r) * Wk * L);
    if (L == 1 && f.sx == 1) {
        for (long y = 0; y < H; y++) memcpy(pad + (y + r) * Wk + r, src + y * f.sy, sizeof(real) * W);
    } else if (f.sc == 1 && lanes == L) {
        for (long y = 0; y < H; y++)
            for (long x = 0; x < W; x++) copy_lanes(pad + ((y + r) * Wk + x + r) * L, src + y * f.sy + x * f.sx, L);
    } else if (f.sx == 1) {
        lanes_in(src, f.sc, f.sy, H, W, lanes, L, pad + (r * Wk + r) * L, Wk * L);
    } else {
        for (long y = 0; y < H; y++)
            for (long x = 0; x < W; x++)
                for (long l = 0; l < lanes; l++) pad[((y + r) * Wk + x + r) * L + l] = src[y * f.sy + x * f.sx + l * f.sc];
    }
}

/* Scratch with row stride Wk (x L lanes) -> a block of a strided tensor (its first value at dst). */
static void conv_unpad_block(const params *q, const real *restrict acc, long Wk, field f, real *dst, long lanes) {
    const long H = q->H, W = q->W, L = q->L;
    if (L == 1 && f.sx == 1) {
        for (long y = 0; y < H; y++) memcpy(dst + y * f.sy, acc + y * Wk, sizeof(real) * W);
    } else if (f.sc == 1 && lanes == L) {
        for (long y = 0; y < H; y++)
            for (long x = 0; x < W; x++) copy_lanes(dst + y * f.sy + x * f.sx, acc + (y * Wk + x) * L, L);
    } else if (f.sx == 1) {
        lanes_out(acc, Wk * L, H, W, lanes, L, dst, f.sc, f.sy);
    } else {
        for (long y = 0; y < H; y++)
            for (long x = 0; x < W; x++)
                for (long l = 0; l < lanes; l++) dst[y * f.sy + x * f.sx + l * f.sc] = acc[(y * Wk + x) * L + l];
    }
}

/* u = bu + wu (*) x and v = bv + wv (*) x for one block (lane l is channel c0 + l: weights wu + (c0 + l) k k,
 * biases NULL = 0, zero padding k / 2 as nn.Conv2d), written into the padded planes du, dv. The block is
 * copied into a zero-padded scratch (H + 2r) x Wk x L, Wk = W + 2r (followed by at least VL values of
 * slack). A row of the output is W L values, computed VL at a time: value j of a row is lane j % L, and L
 * divides VL, so a tap's weights for any chunk are one vector with the lane pattern repeated; every tap is
 * accumulated in registers and each output value is stored once. */
typedef struct {
    real ru, rv, fx, fy; /* bounded = scale * b / sqrt(1 + (b r)^2): r = 0 leaves b unbounded */
} vbounds;

static inline __attribute__((always_inline)) void dwconv2_rows_k(const long kk, const params *q, const real *pad,
                                                                 long Wk, const vec *a, const vec *b, vec ba, vec bb,
                                                                 const long *off, real *du, real *dv,
                                                                 const vbounds *bnd) {
    const long H = q->H, L = q->L, WL = q->W * L;
    /* k = 3: the scratch rows have the padded planes' stride, so all rows are one flat span (small planes
     * are not one short vector per row); the values between rows land in halo columns, which the solver
     * fills before reading them */
    const int flat = Wk * L == q->dY;
    const long rows = flat ? 1 : H, n = flat ? (H - 1) * Wk * L + WL : WL;
    for (long y = 0; y < rows; y++) {
        const real *row = pad + y * Wk * L;
        real *ou = du + q->o0 + y * q->dY, *ov = dv + q->o0 + y * q->dY;
        for (long j = 0; j < n; j += VL) {
            vec su = ba, sv = bb;
            for (long t = 0; t < kk; t++) {
                const vec s = vld(row + off[t] + j);
                su += a[t] * s;
                sv += b[t] * s;
            }
            if (bnd) {
                if (bnd->ru > 0) {
                    su = vbound(su, bnd->ru);
                    sv = vbound(sv, bnd->rv);
                }
                su *= bnd->fx;
                sv *= bnd->fy;
            }
            if (j + VL <= n) {
                vst(ou + j, su);
                vst(ov + j, sv);
            } else {
                vst_n(ou + j, su, n - j);
                vst_n(ov + j, sv, n - j);
            }
        }
    }
}

/* u = bu + wu (*) x and v = bv + wv (*) x for one block from its zero-padded copy ``pad`` ((H + 2r) rows of
 * Wk = W + 2r pixels of L lanes, followed by at least VL values that may be read), written into the padded
 * planes du, dv (lane l is channel c0 + l: weights wu + (c0 + l) k k, biases NULL = 0). A row of the
 * output is W L values, computed VL at a time: value j of a row is lane j % L, and L divides VL, so a tap's
 * weights for any chunk are one vector with the lane pattern repeated; every tap is accumulated in
 * registers and each output value is stored once. ``bnd`` (or NULL): store the bounded, scaled
 * velocities instead (the inference path's ax and ay). */
static void dwconv2_rows(const params *q, const real *pad, long Wk, long lanes, long c0, const real *wu,
                         const real *bu, const real *wv, const real *bv, int ks, real *du, real *dv,
                         const vbounds *bnd) {
    const long L = q->L, kk = (long)ks * ks;
    vec a[kk], b[kk], ba = {0}, bb = {0}; /* any kernel size (k = 31: 124 KB of stack) */
    long off[kk];
    for (long v = 0; v < VL; v++) {
        const long l = v % L;
        ba[v] = l < lanes && bu ? bu[c0 + l] : 0;
        bb[v] = l < lanes && bv ? bv[c0 + l] : 0;
        for (long t = 0; t < kk; t++) {
            a[t][v] = l < lanes ? wu[(c0 + l) * kk + t] : 0;
            b[t][v] = l < lanes ? wv[(c0 + l) * kk + t] : 0;
        }
    }
    for (long t = 0; t < kk; t++) off[t] = ((t / ks) * Wk + t % ks) * L;
    if (ks == 3) /* the taps unrolled, the 18 weight vectors in registers */
        dwconv2_rows_k(9, q, pad, Wk, a, b, ba, bb, off, du, dv, bnd);
    else
        dwconv2_rows_k(kk, q, pad, Wk, a, b, ba, bb, off, du, dv, bnd);
}

/* the same from a block of a strided tensor, copied first into the zero-padded scratch ``pad`` */
static void dwconv2_block(const params *q, field f, const real *x, long lanes, long c0, const real *wu,
                          const real *bu, const real *wv, const real *bv, int ks, real *restrict pad, real *du,
                          real *dv) {
    const long r = ks / 2;
    conv_pad_block(q, f, x, lanes, r, pad);
    dwconv2_rows(q, pad, q->W + 2 * r, lanes, c0, wu, bu, wv, bv, ks, du, dv, NULL);
}

/* Group mode (q->G > 0): channels [c0, c0 + g) of sample n of each present field in fs[0 .. n_in) are
 * transposed into contiguous (g, H, W) planes of buf (slot i at i G H W); ls gets the fields of the staged
 * group (all n slots; absent fields stay absent), which a params with C = nb = g addresses block by
 * block. stage_out copies the staged outputs fs[n_in .. n) back. */
/* ls[i] for field i of a staging buffer: ``staged`` (its slot), absent, or the slot of an earlier field
 * that is the same tensor view (a source that is the initial state is staged once). Returns whether
 * field i is an input to copy in (present, not repeated, i < n_in). */
static int stage_slot(const field *fs, int i, int n_in, field staged, field *ls) {
    const field z = {NULL, 0, 0, 0, 0};
    ls[i] = fs[i].ptr ? staged : z;
    for (int j = 0; j < i; j++)
        if (same_field(fs[j], fs[i])) {
            ls[i] = ls[j];
            return 0;
        }
    return i < n_in && fs[i].ptr;
}

/* whether output field i (of fs[n_in .. i]) is present and not an earlier output again */
static int first_output(const field *fs, int n_in, int i) {
    for (int j = n_in; j < i; j++)
        if (same_field(fs[j], fs[i])) return 0;
    return fs[i].ptr != NULL;
}

#define TILE 8
static void stage_in(const params *q, const field *fs, int n_in, int n_all, long n, long c0, long g, real *buf,
                     field *ls) {
    const long H = q->H, W = q->W, HW = H * W, G = q->G;
    for (int i = 0; i < n_all; i++) {
        const field s = {buf + i * G * HW, g * HW, HW, W, 1};
        if (!stage_slot(fs, i, n_in, s, ls)) continue;
        const field f = fs[i];
        const real *src = f.ptr + n * f.sn + c0 * f.sc;
        real *restrict dst = buf + i * G * HW;
        if (f.sc == 1) { /* channels-last: one pixel's g channels are one cache line */
            for (long y = 0; y < H; y++) {
                long x = 0;
                if (g == G) /* tiles of TILE pixels x G channels, transposed in registers */
                    for (; x + TILE <= W; x += TILE) {
                        real t[MAX_LANES][TILE];
                        for (long j = 0; j < TILE; j++)
                            for (long l = 0; l < MAX_LANES; l++) t[l][j] = src[y * f.sy + (x + j) * f.sx + l];
                        for (long l = 0; l < MAX_LANES; l++)
                            for (long j = 0; j < TILE; j++) dst[l * HW + y * W + x + j] = t[l][j];
                    }
                for (; x < W; x++)
                    for (long l = 0; l < g; l++) dst[l * HW + y * W + x] = src[y * f.sy + x * f.sx + l];
            }
        } else {
            for (long l = 0; l < g; l++)
                for (long y = 0; y < H; y++)
                    for (long x = 0; x < W; x++) dst[l * HW + y * W + x] = src[l * f.sc + y * f.sy + x * f.sx];
        }
    }
}
static void stage_out(const params *q, const field *ls, const field *fs, int n_in, int n_all, long n, long c0,
                      long g) {
    const long H = q->H, W = q->W, HW = H * W;
    for (int i = n_in; i < n_all; i++) {
        if (!first_output(fs, n_in, i)) continue;
        const field f = fs[i];
        const real *restrict src = ls[i].ptr;
        real *dst = (real *)f.ptr + n * f.sn + c0 * f.sc;
        if (f.sc == 1) {
            for (long y = 0; y < H; y++) {
                long x = 0;
                if (g == q->G)
                    for (; x + TILE <= W; x += TILE) {
                        real t[TILE][MAX_LANES];
                        for (long l = 0; l < MAX_LANES; l++)
                            for (long j = 0; j < TILE; j++) t[j][l] = src[l * HW + y * W + x + j];
                        for (long j = 0; j < TILE; j++)
                            for (long l = 0; l < MAX_LANES; l++) dst[y * f.sy + (x + j) * f.sx + l] = t[j][l];
                    }
                for (; x < W; x++)
                    for (long l = 0; l < g; l++) dst[y * f.sy + x * f.sx + l] = src[l * HW + y * W + x];
            }
        } else {
            for (long l = 0; l < g; l++)
                for (long y = 0; y < H; y++)
                    for (long x = 0; x < W; x++) dst[l * f.sc + y * f.sy + x * f.sx] = src[l * HW + y * W + x];
        }
    }
}

/* ---- Channels-last depthwise convolutions, computed in place ----------------------------------------
 * A map whose pixels hold their C channels contiguously (sc = 1, sx = C) is convolved directly: each
 * output row is one pass over its pixels, a vector of VL channels at a time, reading the ks input rows it
 * needs (a row outside the map reads a shared row of zeros). Every access is contiguous, which the lane
 * blocks above are not: a 16-channel block of a 256-channel map reads and writes one cache line per pixel
 * at a 1 KB stride (8 x 256 x 56 x 56, k = 3: the pair's forward took 25.7 ms that way, mostly in writing
 * its outputs). Weights are transposed to (k*k, C) so a tap's weights for VL channels are one vector. */
#define DW_MAX_KK 49 /* kernels up to 7 x 7; larger ones use the block path */

static int pixel_major(field f, long C) { return !f.ptr || (f.sc == 1 && f.sx == C); }

/* (C, k*k) -> (k*k, C), optionally rotated by 180 degrees (tap t -> k*k - 1 - t: the transposed
 * convolution), with VL values of slack so a tail vector load stays in bounds */
static real *taps_major(const real *w, long C, long kk, int rotate) {
    real *t = (real *)calloc((size_t)(kk * C + VL), sizeof(real));
    if (t)
        for (long c = 0; c < C; c++)
            for (long i = 0; i < kk; i++) t[(rotate ? kk - 1 - i : i) * C + c] = w[c * kk + i];
    return t;
}

/* One output row: out_o[x] = sum over inputs i and taps (ky, kx) of w[o][i][tap] * in_i[ky][x + kx - r]
 * (rows[i][ky] points at input row y + ky - r, or at zeros; columns outside the map are skipped). NIN,
 * NOUT and KS are constants once inlined, so an interior pixel is one unrolled block of FMAs. */
static inline __attribute__((always_inline)) void dw_row(int NIN, int NOUT, int KS, const real *const *rows,
                                                         const real *const *w, real *const *out, long W, long C) {
    const long r = KS / 2;
    for (long c = 0; c < C; c += VL) {
        const long m = C - c < VL ? C - c : VL;
        vec wv[2][2 * DW_MAX_KK];
        for (int o = 0; o < NOUT; o++)
            for (int i = 0; i < NIN; i++)
                for (long t = 0; t < KS * KS; t++) wv[o][i * KS * KS + t] = vld(w[o * NIN + i] + t * C + c);
        for (long x = 0; x < W; x++) {
            const long kx0 = x < r ? r - x : 0, kx1 = x + r >= W ? W - 1 - x + r : KS - 1;
            vec acc[2] = {{0}, {0}};
            if (kx0 == 0 && kx1 == KS - 1 && m == VL) {
                for (int i = 0; i < NIN; i++)
                    for (long ky = 0; ky < KS; ky++)
                        for (long kx = 0; kx < KS; kx++) {
                            const vec s = vld(rows[i * KS + ky] + (x + kx - r) * C + c);
                            for (int o = 0; o < NOUT; o++) acc[o] += wv[o][i * KS * KS + ky * KS + kx] * s;
                        }
            } else {
                for (int i = 0; i < NIN; i++)
                    for (long ky = 0; ky < KS; ky++)
                        for (long kx = kx0; kx <= kx1; kx++) {
                            const vec s = vld_m(rows[i * KS + ky] + (x + kx - r) * C + c, m);
                            for (int o = 0; o < NOUT; o++) acc[o] += wv[o][i * KS * KS + ky * KS + kx] * s;
                        }
            }
            for (int o = 0; o < NOUT; o++) {
                if (m == VL)
                    vst(out[o] + x * C + c, acc[o]);
                else
                    vst_n(out[o] + x * C + c, acc[o], m);
            }
        }
    }
}

/* One row's weight gradients: acc[j][t][c] += sum over x of g_j[x][c] * in[ky][x + kx - r][c] */
static inline __attribute__((always_inline)) void dw_wgrad_row(int KS, const real *const *rows, const real *g1,
                                                               const real *g2, real *acc1, real *acc2, long W,
                                                               long C) {
    const long r = KS / 2;
    for (long c = 0; c < C; c += VL) {
        const long m = C - c < VL ? C - c : VL;
        vec s1[DW_MAX_KK], s2[DW_MAX_KK];
        for (long t = 0; t < KS * KS; t++) s1[t] = s2[t] = (vec){0};
        for (long x = 0; x < W; x++) {
            const long kx0 = x < r ? r - x : 0, kx1 = x + r >= W ? W - 1 - x + r : KS - 1;
            const int full = kx0 == 0 && kx1 == KS - 1 && m == VL;
            const vec a = vld_m(g1 + x * C + c, m), b = vld_m(g2 + x * C + c, m);
            if (full) {
                for (long ky = 0; ky < KS; ky++)
                    for (long kx = 0; kx < KS; kx++) {
                        const vec s = vld(rows[ky] + (x + kx - r) * C + c);
                        s1[ky * KS + kx] += a * s;
                        s2[ky * KS + kx] += b * s;
                    }
            } else {
                for (long ky = 0; ky < KS; ky++)
                    for (long kx = kx0; kx <= kx1; kx++) {
                        const vec s = vld_m(rows[ky] + (x + kx - r) * C + c, m);
                        s1[ky * KS + kx] += a * s;
                        s2[ky * KS + kx] += b * s;
                    }
            }
        }
        for (long t = 0; t < KS * KS; t++) {
            vst(acc1 + t * C + c, vld(acc1 + t * C + c) + s1[t]);
            vst(acc2 + t * C + c, vld(acc2 + t * C + c) + s2[t]);
        }
    }
}

#define DW_WITH_KS(ks, CALL)                                                                                 \
    switch (ks) {                                                                                           \
    case 1: { const int KS = 1; CALL; } break;                                                              \
    case 3: { const int KS = 3; CALL; } break;                                                              \
    case 5: { const int KS = 5; CALL; } break;                                                              \
    default: { const int KS = 7; CALL; } break;                                                             \
    }

/* the ks input rows around output row y of sample n (rows outside the map: zeros) */
static void dw_rows(field f, long n, long y, long H, int ks, const real *zeros, const real **rows) {
    for (long ky = 0; ky < ks; ky++) {
        const long yy = y + ky - ks / 2;
        rows[ky] = yy >= 0 && yy < H ? f.ptr + n * f.sn + yy * f.sy : zeros;
    }
}

/* the pair's forward, row by row: o1 = w1 (*) x, o2 = w2 (*) x */
static int dw_cl_forward(field x, const real *w1, const real *w2, int ks, field o1, field o2, long N, long C,
                         long H, long W, int nthreads) {
    const long kk = (long)ks * ks;
    real *zeros = (real *)calloc((size_t)((W + ks) * C + VL), sizeof(real));
    real *t1 = taps_major(w1, C, kk, 0), *t2 = taps_major(w2, C, kk, 0);
    const int failed = !zeros || !t1 || !t2;
    if (!failed) {
        const real *wt[2] = {t1, t2};
        const real *z = zeros + (ks / 2) * C; /* columns -r .. W + r of a zero row are in bounds */
#pragma omp parallel for num_threads(nthreads) schedule(static)
        for (long p = 0; p < N * H; p++) {
            const long n = p / H, y = p % H;
            const real *rows[7];
            real *o[2] = {(real *)o1.ptr + n * o1.sn + y * o1.sy, (real *)o2.ptr + n * o2.sn + y * o2.sy};
            dw_rows(x, n, y, H, ks, z, rows);
            DW_WITH_KS(ks, dw_row(1, 2, KS, rows, wt, o, W, C))
        }
    }
    free(zeros);
    free(t1);
    free(t2);
    return failed;
}

/* add a thread's sums (2, k*k, C) into sample n's gradients (C, k*k), then zero them */
static void dw_flush(real *acc, real *gw1, real *gw2, long n, long C, long kk) {
    real *gw[2] = {gw1, gw2};
    for (int j = 0; j < 2; j++)
        if (gw[j])
            for (long c = 0; c < C; c++)
                for (long t = 0; t < kk; t++) {
                    const real v = acc[(j * kk + t) * C + c];
#pragma omp atomic
                    gw[j][(n * C + c) * kk + t] += v;
                }
    memset(acc, 0, sizeof(real) * 2 * kk * C);
}

/* The backward pass in one sweep over the rows (each of x, g1 and g2 is read from memory once): the input
 * gradient gx (if present) by the transposed convolutions of g1 and g2, and the weight gradients per
 * sample gw1, gw2 ((N, C, k*k), or NULL); a thread sums its rows of a sample in (k*k, C) order and adds
 * them into that sample's gradients when it moves on. */
static int dw_cl_backward(field x, const real *w1, const real *w2, int ks, field g1, field g2, field gx,
                          real *gw1, real *gw2, long N, long C, long H, long W, int nthreads) {
    const long kk = (long)ks * ks;
    const int wgrad = gw1 || gw2;
    real *zeros = (real *)calloc((size_t)((W + ks) * C + VL), sizeof(real));
    real *t1 = taps_major(w1, C, kk, 1), *t2 = taps_major(w2, C, kk, 1);
    int failed = !zeros || !t1 || !t2;
    if (gw1) memset(gw1, 0, sizeof(real) * N * C * kk);
    if (gw2) memset(gw2, 0, sizeof(real) * N * C * kk);
#pragma omp parallel num_threads(nthreads)
    {
        real *acc = failed || !wgrad ? NULL : (real *)calloc((size_t)(2 * kk * C + VL), sizeof(real));
        if (wgrad && !acc && !failed) OUT_OF_MEMORY(failed);
        const int ok = !failed && (acc || !wgrad);
        const real *z = zeros ? zeros + (ks / 2) * C : NULL, *wt[2] = {t1, t2};
        long cur = -1;
#pragma omp for schedule(static)
        for (long p = 0; p < N * H; p++) {
            if (!ok) continue;
            const long n = p / H, y = p % H;
            const real *rows[2 * 7];
            if (gx.ptr) {
                real *o[1] = {(real *)gx.ptr + n * gx.sn + y * gx.sy};
                dw_rows(g1, n, y, H, ks, z, rows);
                dw_rows(g2, n, y, H, ks, z, rows + ks);
                DW_WITH_KS(ks, dw_row(2, 1, KS, rows, wt, o, W, C))
            }
            if (acc) {
                if (n != cur && cur >= 0) dw_flush(acc, gw1, gw2, cur, C, kk);
                cur = n;
                dw_rows(x, n, y, H, ks, z, rows);
                const real *a = g1.ptr + n * g1.sn + y * g1.sy, *b = g2.ptr + n * g2.sn + y * g2.sy;
                DW_WITH_KS(ks, dw_wgrad_row(KS, rows, a, b, acc, acc + kk * C, W, C))
            }
        }
        if (acc && cur >= 0) dw_flush(acc, gw1, gw2, cur, C, kk);
        free(acc);
    }
    free(zeros);
    free(t1);
    free(t2);
    return failed;
}

/* Two depthwise k x k convolutions of x (no bias; weights (C, k*k) each), the training path's velocity
 * or diffusion pair: o1 = w1 (*) x, o2 = w2 (*) x, any layouts. Maps with pixel-contiguous channels (at
 * least a vector of them) and odd k <= 7 are convolved in place row by row (dw_cl_*); others in blocks of
 * lanes (planes too large for a cache line of lanes are read one channel at a time). */
int dw_pair_forward(field x, const real *w1, const real *w2, int ks, field o1, field o2, long N, long C, long H,
                    long W, int nthreads) {
    if (C >= VL && ks <= 7 && ks % 2 && pixel_major(x, C) && pixel_major(o1, C) && pixel_major(o2, C)) {
        return dw_cl_forward(x, w1, w2, ks, o1, o2, N, C, H, W, nthreads);
    }
    params q = make_params(H, W, N, C, 0, 0, 1, 1, 1, 0, 0, 0, 0, x, nthreads, DW_NCHW_LANES);
    const long L = q.L, r = ks / 2, Wk = W + 2 * r, Hk = H + 2 * r, S = q.S, P = N * q.nb;
    int failed = 0;
#pragma omp parallel num_threads(nthreads)
    {
        real *buf = scratch(0, Hk * Wk * L + VL + 2 * S);
        if (!buf) OUT_OF_MEMORY(failed);
#pragma omp for schedule(static)
        for (long p = 0; p < P; p++) {
            if (!buf) continue;
            const long lanes = block_lanes(&q, p), c0 = (p % q.nb) * L;
            real *pad = buf, *du = pad + Hk * Wk * L + VL, *dv = du + S;
            dwconv2_block(&q, x, block_of(x, &q, p), lanes, c0, w1, NULL, w2, NULL, ks, pad, du, dv);
            pad_out(&q, du, o1, (real *)block_of(o1, &q, p), lanes);
            pad_out(&q, dv, o2, (real *)block_of(o2, &q, p), lanes);
        }
    }
    return failed;
}

/* Its backward: gx (or absent) = the transposed convolutions of g1 and g2, summed; gw1, gw2 (or NULL): the
 * weight gradients of every plane, (N C, k*k), which the caller sums over the batch. */
int dw_pair_backward(field x, const real *w1, const real *w2, int ks, field g1, field g2, field gx, real *gw1,
                     real *gw2, long N, long C, long H, long W, int nthreads) {
    if (C >= VL && ks <= 7 && ks % 2 && pixel_major(x, C) && pixel_major(g1, C) && pixel_major(g2, C) &&
        pixel_major(gx, C)) {
        return dw_cl_backward(x, w1, w2, ks, g1, g2, gx, gw1, gw2, N, C, H, W, nthreads);
    }
    params q = make_params(H, W, N, C, 0, 0, 1, 1, 1, 0, 0, 0, 0, x, nthreads, DW_NCHW_LANES);
    const long L = q.L, r = ks / 2, Wk = W + 2 * r, Hk = H + 2 * r, P = N * q.nb, kk = (long)ks * ks;
    const long n = (H - 1) * Wk + W; /* the last output point needed, plus one */
    int failed = 0;
#pragma omp parallel num_threads(nthreads)
    {
        real *buf = scratch(0, (3 * Hk * Wk + n) * L);
        if (!buf) OUT_OF_MEMORY(failed);
#pragma omp for schedule(static)
        for (long p = 0; p < P; p++) {
            if (!buf) continue;
            const long lanes = block_lanes(&q, p), c0 = (p % q.nb) * L, plane0 = (p / q.nb) * C + c0;
            real *xp = buf, *p1 = buf + Hk * Wk * L, *p2 = p1 + Hk * Wk * L, *acc = p2 + Hk * Wk * L;
            real wa[64], wb[64];
            conv_pad_block(&q, g1, block_of(g1, &q, p), lanes, r, p1);
            conv_pad_block(&q, g2, block_of(g2, &q, p), lanes, r, p2);
            if (gx.ptr) {
                /* x[y, x] feeds out[y - ky + r, x - kx + r]: gx[i] = sum of w[ky, kx] g_pad[i + (2r - ky) Wk + 2r - kx] */
                memset(acc, 0, sizeof(real) * n * L);
                for (long ky = 0; ky < ks; ky++) {
                    for (long kx = 0; kx < ks; kx++) {
                        for (long l = 0; l < L; l++) {
                            wa[l] = l < lanes ? w1[(c0 + l) * kk + ky * ks + kx] : 0;
                            wb[l] = l < lanes ? w2[(c0 + l) * kk + ky * ks + kx] : 0;
                        }
                        const long off = ((2 * r - ky) * Wk + 2 * r - kx) * L;
                        const real *restrict s1 = p1 + off, *restrict s2 = p2 + off;
                        if (L == 1) {
                            const real a = wa[0], b = wb[0];
#pragma omp simd
                            for (long i = 0; i < n; i++) acc[i] += a * s1[i] + b * s2[i];
                        } else {
                            WITH_LANES(L, for (long i = 0; i < n; i++) {
                                _Pragma("omp simd") for (long l = 0; l < LL; l++)
                                    acc[i * LL + l] += wa[l] * s1[i * LL + l] + wb[l] * s2[i * LL + l];
                            })
                        }
                    }
                }
                conv_unpad_block(&q, acc, Wk, gx, (real *)block_of(gx, &q, p), lanes);
            }
            if (gw1 || gw2) {
                /* gw[ky, kx] = sum over the plane of g[y, x] x_pad[y + ky, x + kx]; g in row stride Wk with
                 * zeros beyond column W is p + (r Wk + r) L */
                conv_pad_block(&q, x, block_of(x, &q, p), lanes, r, xp);
                const real *restrict q1 = p1 + (r * Wk + r) * L, *restrict q2 = p2 + (r * Wk + r) * L;
                for (long ky = 0; ky < ks; ky++) {
                    for (long kx = 0; kx < ks; kx++) {
                        const real *restrict src = xp + (ky * Wk + kx) * L;
                        real s1[64] = {0}, s2[64] = {0};
                        if (L == 1) {
                            real a = 0, b = 0;
#pragma omp simd reduction(+ : a, b)
                            for (long i = 0; i < n; i++) {
                                a += q1[i] * src[i];
                                b += q2[i] * src[i];
                            }
                            s1[0] = a;
                            s2[0] = b;
                        } else {
                            WITH_LANES(L, for (long i = 0; i < n; i++) {
                                _Pragma("omp simd") for (long l = 0; l < LL; l++) {
                                    s1[l] += q1[i * LL + l] * src[i * LL + l];
                                    s2[l] += q2[i * LL + l] * src[i * LL + l];
                                }
                            })
                        }
                        for (long l = 0; l < lanes; l++) {
                            if (gw1) gw1[(plane0 + l) * kk + ky * ks + kx] = s1[l];
                            if (gw2) gw2[(plane0 + l) * kk + ky * ks + kx] = s2[l];
                        }
                    }
                }
            }
        }
    }
    return failed;
}

/* Sample mode (q->M): every field of sample n in fs[0 .. n_in) is copied into buf block-major, slot i at
 * i C H W: block b (channels b L .. b L + L) is a contiguous (H, W, L) array, so a block reads its pixels
 * contiguously instead of one cache line per pixel at a stride of C values; the source is read pixel by
 * pixel, C values at a time. ls gets fields addressing the staged sample as nb samples of L channels
 * (absent and repeated fields as in stage_in). sample_out copies the staged outputs fs[n_in .. n) back. */
static void sample_in(const params *q, const field *fs, int n_in, int n_all, long n, real *buf, field *ls) {
    const long H = q->H, W = q->W, L = q->L, HW = H * W, C = q->C, nb = q->nb;
    for (int i = 0; i < n_all; i++) {
        const field s = {buf + i * C * HW, HW * L, 1, W * L, L};
        if (!stage_slot(fs, i, n_in, s, ls)) continue;
        const field f = fs[i];
        const real *src = f.ptr + n * f.sn;
        real *restrict dst = buf + i * C * HW;
        for (long y = 0; y < H; y++)
            for (long x = 0; x < W; x++) {
                const real *px = src + y * f.sy + x * f.sx;
                real *d = dst + (y * W + x) * L;
                if (f.sc == 1)
                    for (long b = 0; b < nb; b++) copy_lanes(d + b * HW * L, px + b * L, L);
                else
                    for (long c = 0; c < C; c++) d[(c / L) * HW * L + c % L] = px[c * f.sc];
            }
    }
}
static void sample_out(const params *q, const field *ls, const field *fs, int n_in, int n_all, long n) {
    const long H = q->H, W = q->W, L = q->L, HW = H * W, C = q->C, nb = q->nb;
    for (int i = n_in; i < n_all; i++) {
        if (!first_output(fs, n_in, i)) continue;
        const field f = fs[i];
        const real *restrict src = ls[i].ptr;
        real *dst = (real *)f.ptr + n * f.sn;
        for (long y = 0; y < H; y++)
            for (long x = 0; x < W; x++) {
                real *px = dst + y * f.sy + x * f.sx;
                const real *s = src + (y * W + x) * L;
                if (f.sc == 1)
                    for (long b = 0; b < nb; b++) copy_lanes(px + b * L, s + b * HW * L, L);
                else
                    for (long c = 0; c < C; c++) px[c * f.sc] = s[(c / L) * HW * L + c % L];
            }
    }
}

/* Per-thread scratch of the forward and backward passes (pointers into one allocation). */
typedef struct {
    coefs c, g;          /* coefficients and their raw inputs; backward: the coefficient gradients (g) */
    real *lv[3];         /* forward: three time levels */
    real *states, *lam;  /* backward: H^0 .. H^K, and three adjoint planes */
    real *cbuf;          /* forward with velocity convolutions: the padded block and two outputs */
} work;

/* Velocity convolution weights for the inference path (ks = 0: velocities are input fields). */
typedef struct {
    const real *wu, *bu, *wv, *bv;
    int ks;
} dwweights;

static void forward_block(const params *q, const work *w, long p, const field *fs, long chan, const dwweights *dw);
static void backward_block(const params *q, work *w, long p, const field *fs);

/* Run the forward (fs = init f u v Dx Dy out) or backward (fs = gout init f u v Dx Dy, then the 6
 * gradients) pass over every block: directly on the tensors, or in group mode on staged groups of
 * channels. */
static int for_each_block(const params *q, const field *fs, int backward, const dwweights *dw, long N,
                          int nthreads) {
    const long S = q->S, L = q->L, K = q->K;
    const int n_in = backward ? 7 : 6, n_all = backward ? 13 : 7;
    const long Wk = q->W + 2 * (dw->ks / 2), Hk = q->H + 2 * (dw->ks / 2);
    const long conv = dw->ks ? Hk * Wk * L + VL : 0;
    int failed = 0;
    if (!condense_legacy) { /* threads by size: no more than work items, none for a sliver of work */
        const long items = q->M ? N : q->G ? N * ((q->C + q->G - 1) / q->G) : N * q->nb;
        const long work = N * q->C * q->H * q->W * (K + 4) * (backward ? 3 : 1);
        long most = work / MIN_WORK_PER_THREAD;
        if (most > items) most = items;
        if (most < 1) most = 1;
        if (nthreads > most) nthreads = (int)most;
    }
#pragma omp parallel num_threads(nthreads)
    {
        work w = {0};
        /* the forward writes every value before it reads it (values in halo columns only reach halo columns,
         * which are refilled): its scratch needs no zeroing, which cost a pass over ~12 planes per call */
        real *buf = backward ? scratch(0, (COEF_PLANES + 7 + K + 1 + 3) * S)
                    : condense_legacy ? scratch(0, (COEF_PLANES + 3) * S + conv)
                                      : scratch_kept(0, (COEF_PLANES + 3) * S + conv);
        real *sbuf = q->G ? scratch(1, (long)n_all * q->G * q->H * q->W)
                   : q->M ? scratch_raw(1, (long)n_all * q->C * q->H * q->W) : NULL;
        const int ok = buf && (sbuf || !(q->G || q->M));
        if (!ok) {
            OUT_OF_MEMORY(failed);
            buf = sbuf = NULL; /* every thread still meets the worksharing loop below, without work */
        }
        if (ok && backward) {
            w.c = coefs_at(buf, S);
            w.g = coefs_at(buf + COEF_PLANES * S, S); /* only its first 7 planes (a0 .. s) are used */
            w.states = buf + (COEF_PLANES + 7) * S;
            w.lam = w.states + (K + 1) * S;
        } else if (ok) {
            w.c = coefs_at(buf, S);
            for (int i = 0; i < 3; i++) w.lv[i] = buf + (COEF_PLANES + i) * S;
            w.cbuf = dw->ks ? buf + (COEF_PLANES + 3) * S : NULL;
        }
        if (q->M) {
            field ls[13];
            params lq = *q;
            lq.C = L;
            lq.nb = 1;
            lq.M = 0;
#pragma omp for schedule(static)
            for (long n = 0; n < N; n++) {
                if (!ok) continue;
                sample_in(q, fs, n_in, n_all, n, sbuf, ls);
                for (long b = 0; b < q->nb; b++) {
                    if (backward)
                        backward_block(&lq, &w, b, ls);
                    else
                        forward_block(&lq, &w, b, ls, b * L, dw);
                }
                sample_out(q, ls, fs, n_in, n_all, n);
            }
        } else if (!q->G) {
#pragma omp for schedule(static)
            for (long p = 0; p < N * q->nb; p++) {
                if (!ok) continue;
                if (backward)
                    backward_block(q, &w, p, fs);
                else
                    forward_block(q, &w, p, fs, (p % q->nb) * L, dw);
            }
        } else {
            const long G = q->G, ng = (q->C + G - 1) / G;
            field ls[13];
#pragma omp for schedule(static)
            for (long gi = 0; gi < N * ng; gi++) {
                if (!ok) continue;
                const long n = gi / ng, c0 = (gi % ng) * G, g = q->C - c0 < G ? q->C - c0 : G;
                params lq = *q;
                lq.C = lq.nb = g;
                lq.G = 0;
                stage_in(q, fs, n_in, n_all, n, c0, g, sbuf, ls);
                for (long p = 0; p < g; p++) {
                    if (backward)
                        backward_block(&lq, &w, p, ls);
                    else
                        forward_block(&lq, &w, p, ls, c0 + p, dw);
                }
                stage_out(q, ls, fs, n_in, n_all, n, c0, g);
            }
        }
    }    return failed;
}

/* The K steps from H^{-1} = H^0 = lv[0] (halo filled): H^k lands in lv[k % 3] (H^1 in lv[1], H^2 in lv[2],
 * H^3 in lv[0], ...) */
static void run_steps(const params *q, const coefs *c, real *const *lv) {
    for (int k = 0; k < q->K; k++) step(q, c, lv[k == 0 ? 0 : (k - 1) % 3], lv[k % 3], lv[(k + 1) % 3]);
}

/* the halo of a padded block set to 0 (the zero padding of a 3 x 3 convolution read in place) */
static void zero_halo(const params *q, real *h) {
    real *first = h + q->o0, *last = first + (q->H - 1) * q->dY;
    zero_halo_cols(q, h);
    memset(first - q->dY - q->L, 0, sizeof(real) * q->dY);
    memset(last + q->dY - q->L, 0, sizeof(real) * q->dY);
}

/* Inference with velocity convolutions and constant diffusion: the coefficients of one block in two passes.
 * H^0 is padded into h0 (halo filled on return). The convolutions store the bounded velocities already
 * scaled to ax = b(u) dt / (dx L) and ay (vbounds), read in place from h0 with a zero halo for k = 3
 * (else from the conv scratch); then one pass makes s = 2 dt f / L (f = H^0 read from h0 when the source is
 * the initial state) and a1 = -2 dt (u_x + v_y) / L = -(ax[x+1] - ax[x-1]) - (ay[y+1] - ay[y-1]). Equal
 * to compute_coefs up to rounding, with 2 passes over the block instead of ~8. */
static void infer_coefs(const params *q, coefs *c, real *h0, long p, long lanes, long chan, field init, field f,
                        const dwweights *dw, real *cbuf) {
    const long o = q->o0, n = q->n, L = q->L, dY = q->dY;
    const real kx = (real)(q->dt / (q->dx * q->dx)), ky = (real)(q->dt / (q->dy * q->dy));
    const real bx = (real)q->dxc * kx, by = (real)q->dyc * ky;
    const real iL = (real)1 / ((real)1 + 2 * bx + 2 * by);
    c->var_d = 0;
    c->a0c = ((real)1 - 2 * bx - 2 * by) * iL;
    c->txc = 2 * bx * iL;
    c->tyc = 2 * by * iL;
    const double umax = q->courant > 0 ? q->courant * q->dx / q->dt : 0;
    const double vmax = q->courant > 0 ? q->courant * q->dy / q->dt : 0;
    const vbounds bnd = {(real)(umax > 0 ? 1 / umax : 0), (real)(vmax > 0 ? 1 / vmax : 0),
                         (real)(q->dt / q->dx) * iL, (real)(q->dt / q->dy) * iL};
    if (dw->ks == 3) {
        zero_halo(q, h0);
        dwconv2_rows(q, h0 + dY, q->Wp, lanes, chan, dw->wu, dw->bu, dw->wv, dw->bv, 3, c->ax, c->ay, &bnd);
    } else {
        const long r = dw->ks / 2;
        const field padded = {h0 + o, 0, 1, dY, L};
        conv_pad_block(q, padded, padded.ptr, lanes, r, cbuf);
        dwconv2_rows(q, cbuf, q->W + 2 * r, lanes, chan, dw->wu, dw->bu, dw->wv, dw->bv, dw->ks, c->ax, c->ay,
                     &bnd);
    }
    fill_halo(q, h0);
    fill_halo(q, c->ax);
    fill_halo(q, c->ay);
    const real *fsrc = NULL;
    if (same_field(f, init)) {
        fsrc = h0 + o;
    } else if (f.ptr) {
        pad_in(q, f, block_of(f, q, p), lanes, c->s);
        fsrc = c->s + o;
    }
    const real two_dt = (real)(2 * q->dt) * iL;
    const real *restrict ax = c->ax + o, *restrict ay = c->ay + o;
    real *restrict a1 = c->a1 + o, *s = c->s + o; /* fsrc may be s itself */
    if (fsrc) {
#pragma omp simd
        for (long i = 0; i < n; i++) {
            a1[i] = (ax[i - L] - ax[i + L]) + (ay[i - dY] - ay[i + dY]);
            s[i] = two_dt * fsrc[i];
        }
    } else {
#pragma omp simd
        for (long i = 0; i < n; i++) {
            a1[i] = (ax[i - L] - ax[i + L]) + (ay[i - dY] - ay[i + dY]);
            s[i] = 0;
        }
    }
}

/* One inference step: ``step`` with constant diffusion, where hn may be hm (each output value reads H^{k-1}
 * at its own position only), so two time levels suffice and a block's working set is 6 planes, not 7
 * (recomputing a1 from ax and ay in the step instead of streaming it measured 4-7% slower: more loads). */
static void step_infer(const params *q, const coefs *c, const real *hm, const real *hc, real *hn) {
    const long o = q->o0, n = q->n, L = q->L, dY = q->dY;
    const real *restrict ax = c->ax + o, *restrict ay = c->ay + o, *restrict s = c->s + o, *restrict a1 = c->a1 + o;
    const real *m = hm + o, *restrict h = hc + o;
    real *out = hn + o;
    const real a0 = c->a0c, tx = c->txc, ty = c->tyc;
#pragma omp simd
    for (long i = 0; i < n; i++) {
        const real e = h[i + L], w = h[i - L], nn = h[i + dY], ss = h[i - dY];
        out[i] = s[i] + a0 * m[i] + a1[i] * h[i] + tx * (e + w) + ty * (nn + ss) - ax[i] * (e - w) - ay[i] * (nn - ss);
    }
    fill_halo(q, hn);
}

/* The K inference steps from H^{-1} = H^0 = a (halo filled) with one more level b: H^1 -> b, then each step
 * overwrites H^{k-1} with H^{k+1}. Returns the level holding H^K. */
static real *run_steps_infer(const params *q, const coefs *c, real *a, real *b) {
    if (q->K == 0) return a;
    step_infer(q, c, a, a, b);
    real *prev = a, *cur = b;
    for (int k = 1; k < q->K; k++) {
        step_infer(q, c, prev, cur, prev);
        real *t = prev;
        prev = cur;
        cur = t;
    }
    return cur;
}

/* One block of the forward pass (fs = init f u v Dx Dy out); with dw->ks the velocities are not inputs
 * but depthwise convolutions of the initial state (u = conv(H^0, wu[c]) + bu[c], v likewise; ``chan``
 * is the block's first channel), so the inference path reads H^0 once for the convolutions and the K
 * steps together. */
static void forward_block(const params *q, const work *w, long p, const field *fs, long chan, const dwweights *dw) {
    const field init = fs[0], f = fs[1], u = fs[2], v = fs[3], Dx = fs[4], Dy = fs[5], out = fs[6];
    const long lanes = block_lanes(q, p), L = q->L, K = q->K;
    real *const *lv = w->lv;
    coefs c = w->c;
    const real *h0 = block_of(init, q, p);
    real *dst = (real *)block_of(out, q, p);
    pad_in(q, init, h0, lanes, lv[0]);
    if (K == 0) {
        pad_out(q, lv[0], out, dst, lanes);
        return;
    }
    if (dw->ks && !Dx.ptr && !condense_legacy) {
        infer_coefs(q, &c, lv[0], p, lanes, chan, init, f, dw, w->cbuf);
        pad_out(q, run_steps_infer(q, &c, lv[0], lv[1]), out, dst, lanes);
        return;
    }
    fill_halo(q, lv[0]);
    load_block(q, c, p, lanes, init, lv[0], f, u, v, Dx, Dy);
    if (dw->ks) {
        /* the convolutions read H^0 from its padded block (plane values only), not from the tensor again */
        const field padded = {lv[0] + q->o0, 0, 1, q->dY, L};
        dwconv2_block(q, padded, padded.ptr, lanes, chan, dw->wu, dw->bu, dw->wv, dw->bv, dw->ks, w->cbuf, c.u, c.v);
    }
    compute_coefs(q, &c, f.ptr != NULL, u.ptr != NULL || dw->ks, Dx.ptr != NULL);
    run_steps(q, &c, lv);
    pad_out(q, lv[K % 3 == 0 ? 0 : K % 3 == 1 ? 1 : 2], out, dst, lanes);
}

static int forward_impl(field init, field f, field u, field v, field Dx, field Dy, const dwweights *dw,
                         field out, long N, long C, long H, long W, int K, double dt, double dx, double dy,
                         double dxc, double dyc, int boundary, double courant, double dmax, int nthreads) {
    const params q = make_params(H, W, N, C, K, boundary, dt, dx, dy, dxc, dyc, courant, dmax, init, nthreads, 1);
    const field fs[7] = {init, f, u, v, Dx, Dy, out};
    return for_each_block(&q, fs, 0, dw, N, nthreads);
}

int ad_forward(field init, field f, field u, field v, field Dx, field Dy, field out, long N, long C, long H,
                long W, int K, double dt, double dx, double dy, double dxc, double dyc, int boundary,
                double courant, double dmax, int nthreads) {
    const dwweights none = {NULL, NULL, NULL, NULL, 0};
    return forward_impl(init, f, u, v, Dx, Dy, &none, out, N, C, H, W, K, dt, dx, dy, dxc, dyc, boundary, courant, dmax,
                 nthreads);
}

/* Inference only (no backward): velocities from depthwise k x k convolutions of init (weights (C, k*k),
 * biases (C,); a BatchNorm after the convolution is folded into them by the caller). */
int ad_forward_dwvel(field init, field f, const real *wu, const real *bu, const real *wv, const real *bv, int ks,
                      field Dx, field Dy, field out, long N, long C, long H, long W, int K, double dt, double dx,
                      double dy, double dxc, double dyc, int boundary, double courant, double dmax, int nthreads) {
    const field none = {NULL, 0, 0, 0, 0};
    const dwweights dw = {wu, bu, wv, bv, ks};
    return forward_impl(init, f, none, none, Dx, Dy, &dw, out, N, C, H, W, K, dt, dx, dy, dxc, dyc, boundary, courant,
                 dmax, nthreads);
}

/* The same with each BatchNorm after a velocity convolution folded here (its running statistics, eval mode):
 * w' = w g / sqrt(var + eps), b' = beta - mean g / sqrt(var + eps), per channel. A compiled graph then holds
 * one op per layer instead of the folding's small kernels (~40 us a layer at batch 1 on this CPU). conv
 * weights (C, k*k); g, beta, mean, var (C,). */
int ad_forward_dwvel_bn(field init, field f, const real *cu, const real *gu, const real *betau, const real *mu,
                        const real *varu, double epsu, const real *cv, const real *gv, const real *betav,
                        const real *mv, const real *varv, double epsv, int ks, field Dx, field Dy, field out, long N,
                        long C, long H, long W, int K, double dt, double dx, double dy, double dxc, double dyc,
                        int boundary, double courant, double dmax, int nthreads) {
    const long kk = (long)ks * ks;
    real *buf = (real *)malloc(sizeof(real) * (size_t)(2 * C * (kk + 1)));
    if (!buf) return 1;
    real *wu = buf, *wv = buf + C * kk, *bu = buf + 2 * C * kk, *bv = bu + C;
    const real *conv[2] = {cu, cv}, *g[2] = {gu, gv}, *beta[2] = {betau, betav}, *mean[2] = {mu, mv};
    const real *var[2] = {varu, varv};
    const double eps[2] = {epsu, epsv};
    real *wo[2] = {wu, wv}, *bo[2] = {bu, bv};
    for (int j = 0; j < 2; j++)
        for (long c = 0; c < C; c++) {
            const real scale = g[j][c] * ((real)1 / SQRT(var[j][c] + (real)eps[j]));
            for (long t = 0; t < kk; t++) wo[j][c * kk + t] = conv[j][c * kk + t] * scale;
            bo[j][c] = beta[j][c] - mean[j][c] * scale;
        }
    const int failed = ad_forward_dwvel(init, f, wu, bu, wv, bv, ks, Dx, Dy, out, N, C, H, W, K, dt, dx, dy, dxc, dyc,
                                        boundary, courant, dmax, nthreads);
    free(buf);
    return failed;
}

/* One adjoint step. ln = lambda^{k+1} (plane values, halo 0); hk = H^k and hkm = H^{k-1} (halo filled).
 * Accumulates the coefficient gradients g (a0, tx, ty only with variable diffusion), lp (lambda^{k-1})
 * += a0 ln, and lc (lambda^k) += the transposed stencil applied to ln (over the wide span, then folded
 * back onto the plane). */
static void adjoint_step(const params *q, const coefs *c, const coefs *g, const real *ln_, const real *hk_,
                         const real *hkm_, real *lc_, real *lp_) {
    const long o = q->o0, n = q->n, L = q->L, dY = q->dY;
    {
        const real *restrict l = ln_ + o, *restrict h = hk_ + o;
        real *restrict ga1 = g->a1 + o, *restrict gs = g->s + o, *restrict gax = g->ax + o;
        real *restrict gay = g->ay + o, *restrict lp = lp_ + o;
        if (c->var_d) {
            const real *restrict hm = hkm_ + o, *restrict a0 = c->a0 + o;
            real *restrict ga0 = g->a0 + o, *restrict gtx = g->tx + o, *restrict gty = g->ty + o;
#pragma omp simd
            for (long i = 0; i < n; i++) {
                const real li = l[i], e = h[i + L], w = h[i - L], nn = h[i + dY], ss = h[i - dY];
                ga0[i] += li * hm[i];
                gtx[i] += li * (e + w);
                gty[i] += li * (nn + ss);
                ga1[i] += li * h[i];
                gs[i] += li;
                gax[i] += li * (w - e);
                gay[i] += li * (ss - nn);
                lp[i] += a0[i] * li;
            }
        } else {
            const real a0 = c->a0c;
#pragma omp simd
            for (long i = 0; i < n; i++) {
                const real li = l[i];
                ga1[i] += li * h[i];
                gs[i] += li;
                gax[i] += li * (h[i - L] - h[i + L]);
                gay[i] += li * (h[i - dY] - h[i + dY]);
                lp[i] += a0 * li;
            }
        }
    }
    {
        /* lambda^k[j] += a1 l + sum over the 4 neighbours i of j of (the coefficient at i of H[j]) l[i] */
        const long w = q->ow, nw = q->nw;
        const real *restrict l = ln_ + w, *restrict a1 = c->a1 + w, *restrict ax = c->ax + w, *restrict ay = c->ay + w;
        real *restrict lc = lc_ + w;
        if (c->var_d) {
            const real *restrict tx = c->tx + w, *restrict ty = c->ty + w;
#pragma omp simd
            for (long i = 0; i < nw; i++)
                lc[i] += a1[i] * l[i] + (tx[i - L] - ax[i - L]) * l[i - L] + (tx[i + L] + ax[i + L]) * l[i + L] +
                         (ty[i - dY] - ay[i - dY]) * l[i - dY] + (ty[i + dY] + ay[i + dY]) * l[i + dY];
        } else {
            const real tx = c->txc, ty = c->tyc;
#pragma omp simd
            for (long i = 0; i < nw; i++)
                lc[i] += a1[i] * l[i] + tx * (l[i - L] + l[i + L]) + ty * (l[i - dY] + l[i + dY]) -
                         ax[i - L] * l[i - L] + ax[i + L] * l[i + L] - ay[i - dY] * l[i - dY] + ay[i + dY] * l[i + dY];
        }
    }
    fold_halo(q, lc_);
}

/* One block of the backward pass (fs = gout init f u v Dx Dy, then the gradients ginit gf gu gv gDx gDy;
 * absent fields are not computed). */
/* One block of the backward pass (fs = gout init f u v Dx Dy, then the gradients ginit gf gu gv gDx gDy;
 * absent fields are not computed). */
static void backward_block(const params *q, work *ws, long p, const field *fs) {
    const field gout = fs[0], init = fs[1], f = fs[2], u = fs[3], v = fs[4], Dx = fs[5], Dy = fs[6];
    const field ginit = fs[7], gf = fs[8], gu = fs[9], gv = fs[10], gDx = fs[11], gDy = fs[12];
    const long S = q->S, o = q->o0, n = q->n, L = q->L, dY = q->dY;
    const int K = q->K, has_vel = u.ptr != NULL;
    const double dt = q->dt, dx = q->dx, dy = q->dy, dxc = q->dxc, dyc = q->dyc, dmax = q->dmax;
    const double umax = q->courant > 0 ? q->courant * dx / dt : 0;
    const double vmax = q->courant > 0 ? q->courant * dy / dt : 0;
    coefs c = ws->c, g = ws->g;
    real *gbuf = g.a0, *states = ws->states, *lam = ws->lam; /* states + k S = H^k, k = 0..K */
    const long lanes = block_lanes(q, p);
    const int merged = same_field(gf, ginit); /* f = init: the caller wants the sum of both gradients */
    memset(lam, 0, sizeof(real) * 3 * S);
    /* adjoints: ln = lambda^{k+1}, lc = lambda^k, lp = lambda^{k-1} */
    real *ln = lam, *lc = lam + S, *lp = lam + 2 * S;
    pad_in(q, gout, block_of(gout, q, p), lanes, ln);
    if (K == 0) {
        if (ginit.ptr) pad_out(q, ln, ginit, (real *)block_of(ginit, q, p), lanes);
        memset(gbuf, 0, sizeof(real) * S);
        const field zeros[5] = {gf, gu, gv, gDx, gDy};
        for (int i = 0; i < 5; i++)
            if (zeros[i].ptr && !(i == 0 && merged)) pad_out(q, gbuf, zeros[i], (real *)block_of(zeros[i], q, p), lanes);
        return;
    }
    pad_in(q, init, block_of(init, q, p), lanes, states);
    fill_halo(q, states);
    load_block(q, c, p, lanes, init, states, f, u, v, Dx, Dy);
    compute_coefs(q, &c, f.ptr != NULL, has_vel, Dx.ptr != NULL);
    for (int k = 0; k < K; k++)
        step(q, &c, states + (k > 0 ? k - 1 : 0) * S, states + k * S, states + (k + 1) * S);
    /* the coefficient gradients the adjoint accumulates (a0, tx, ty only with variable diffusion) */
    {
        real *acc[7] = {g.a1, g.ax, g.ay, g.s, g.a0, g.tx, g.ty};
        for (int i = 0; i < (c.var_d ? 7 : 4); i++) memset(acc[i], 0, sizeof(real) * S);
    }
    for (int k = K - 1; k >= 0; k--) {
        adjoint_step(q, &c, &g, ln, states + k * S, states + (k > 0 ? k - 1 : 0) * S, lc, lp);
        /* rotate: lambda^{k+1} is done; the next step needs lambda^k (complete) and lambda^{k-1} */
        real *t = ln;
        ln = lc;
        lc = lp;
        lp = t;
        memset(lp, 0, sizeof(real) * S);
    }
    /* now ln = lambda^0 and lc = lambda^{-1}; H^{-1} = H^0 = init */
    if (ginit.ptr)
        for (long i = o; i < o + n; i++) ln[i] += lc[i];
    /* chain rule from the coefficients to source, velocity and diffusion. Every coefficient is
     * X / L, so d/dBx of it is dX/dBx / L - 2 (coefficient) / L. Pass 1 (per element): afterwards
     * g.s holds d/df, g.tx d/dDx, g.ty d/dDy, g.a1 d/d(u_x + v_y), g.ax d/d(bounded u) and g.ay
     * d/d(bounded v) of the direct (non-derivative) terms */
    const real kx = (real)(dt / (dx * dx)), ky = (real)(dt / (dy * dy)), two_dt = (real)(2 * dt);
    const real m2dt = (real)(-2 * dt), kax = (real)(dt / dx), kay = (real)(dt / dy);
    {
        real *restrict ga1 = g.a1 + o, *restrict gax = g.ax + o, *restrict gay = g.ay + o;
        real *restrict gs = g.s + o;
        if (c.var_d) {
            const real dm = (real)(dmax > 0 ? dmax : 1e30);
            const real *restrict dxp = c.Dx + o, *restrict dyp = c.Dy + o;
            const real *restrict a0 = c.a0 + o, *restrict a1 = c.a1 + o, *restrict tx = c.tx + o;
            const real *restrict ty = c.ty + o, *restrict ax = c.ax + o, *restrict ay = c.ay + o;
            const real *restrict cs = c.s + o;
            real *restrict ga0 = g.a0 + o, *restrict gtx = g.tx + o, *restrict gty = g.ty + o;
#pragma omp simd
            for (long i = 0; i < n; i++) {
                real dxv = CLAMP(dxp[i], (real)0, dm), dyv = CLAMP(dyp[i], (real)0, dm);
                real iL = (real)1 / ((real)1 + 2 * dxv * kx + 2 * dyv * ky);
                real T = ga0[i] * a0[i] + ga1[i] * a1[i] + gtx[i] * tx[i] + gty[i] * ty[i] +
                         gax[i] * ax[i] + gay[i] * ay[i] + gs[i] * cs[i];
                real passx = (dxp[i] >= 0 && dxp[i] <= dm) ? (real)1 : (real)0;
                real passy = (dyp[i] >= 0 && dyp[i] <= dm) ? (real)1 : (real)0;
                real gdx = (2 * (gtx[i] - ga0[i]) - 2 * T) * iL * kx * passx;
                real gdy = (2 * (gty[i] - ga0[i]) - 2 * T) * iL * ky * passy;
                gtx[i] = gdx;
                gty[i] = gdy;
                gs[i] *= two_dt * iL;
                ga1[i] *= m2dt * iL;
                gax[i] *= kax * iL;
                gay[i] *= kay * iL;
            }
        } else {
            const real iL = (real)1 / ((real)1 + 2 * (real)dxc * kx + 2 * (real)dyc * ky);
            const real fs = two_dt * iL, fd = m2dt * iL, fx = kax * iL, fy = kay * iL;
#pragma omp simd
            for (long i = 0; i < n; i++) {
                gs[i] *= fs;
                ga1[i] *= fd;
                gax[i] *= fx;
                gay[i] *= fy;
            }
        }
    }
    if (merged) /* one gradient for the initial state that is also the source */
        for (long i = o; i < o + n; i++) ln[i] += g.s[i];
    if (ginit.ptr) pad_out(q, ln, ginit, (real *)block_of(ginit, q, p), lanes);
    if (gf.ptr && !merged) pad_out(q, g.s, gf, (real *)block_of(gf, q, p), lanes);
    if (gDx.ptr) pad_out(q, g.tx, gDx, (real *)block_of(gDx, q, p), lanes);
    if (gDy.ptr) pad_out(q, g.ty, gDy, (real *)block_of(gDy, q, p), lanes);
    if (gu.ptr || gv.ptr) {
        /* pass 2: the central differences' transposes (div[i] has +u[i+L], -u[i-L], +v[i+dY],
         * -v[i-dY]) over the wide span, folded back onto the plane: d/d(bounded u), d/d(bounded v) */
        zero_halo_cols(q, g.a1);
        zero_halo_cols(q, g.ax);
        zero_halo_cols(q, g.ay);
        const real hx = (real)(0.5 / dx), hy = (real)(0.5 / dy);
        const long w = q->ow, nw = q->nw;
        const real *restrict gdiv = g.a1 + w;
        real *restrict gub = g.ax + w, *restrict gvb = g.ay + w;
#pragma omp simd
        for (long i = 0; i < nw; i++) {
            gub[i] += hx * (gdiv[i - L] - gdiv[i + L]);
            gvb[i] += hy * (gdiv[i - dY] - gdiv[i + dY]);
        }
        fold_halo(q, g.ax);
        fold_halo(q, g.ay);
        /* pass 3: through the velocity bound b = u / sqrt(1 + (u / umax)^2), from b = ax L dx / dt (the raw
         * u is not kept): d b / du = (1 + (u / umax)^2)^(-3/2) = (1 - (b / umax)^2)^(3/2) */
        const real ru = (real)(umax > 0 ? 1 / umax : 0), rv = (real)(vmax > 0 ? 1 / vmax : 0);
        const real iLc = (real)1 / ((real)1 + 2 * (real)dxc * kx + 2 * (real)dyc * ky);
        const real *restrict cax = c.ax + o, *restrict cay = c.ay + o, *restrict a0 = c.a0 + o;
        real *restrict du = g.ax + o, *restrict dv = g.ay + o;
        const real su = ru / kax, sv = rv / kay;
#define BOUND_GRAD(Lval)                                                                                    \
    for (long i = 0; i < n; i++) {                                                                          \
        const real L_ = (Lval), tu = cax[i] * L_ * su, tv = cay[i] * L_ * sv;                               \
        real r = (real)1 - tu * tu, s = (real)1 - tv * tv;                                                  \
        r = r > 0 ? r : 0;                                                                                  \
        s = s > 0 ? s : 0;                                                                                  \
        du[i] *= r * SQRT(r);                                                                               \
        dv[i] *= s * SQRT(s);                                                                               \
    }
        if (c.var_d) {
#pragma omp simd
            BOUND_GRAD((real)2 / (a0[i] + 1))
        } else {
#pragma omp simd
            BOUND_GRAD((real)1 / iLc)
        }
#undef BOUND_GRAD
        if (gu.ptr) pad_out(q, g.ax, gu, (real *)block_of(gu, q, p), lanes);
        if (gv.ptr) pad_out(q, g.ay, gv, (real *)block_of(gv, q, p), lanes);
    }
}

int ad_backward(field gout, field init, field f, field u, field v, field Dx, field Dy, field ginit, field gf,
                 field gu, field gv, field gDx, field gDy, long N, long C, long H, long W, int K, double dt,
                 double dx, double dy, double dxc, double dyc, int boundary, double courant, double dmax,
                 int nthreads) {
    const params q = make_params(H, W, N, C, K, boundary, dt, dx, dy, dxc, dyc, courant, dmax, init, nthreads, 1);
    const field fs[13] = {gout, init, f, u, v, Dx, Dy, ginit, gf, gu, gv, gDx, gDy};
    const dwweights none = {NULL, NULL, NULL, NULL, 0};
    return for_each_block(&q, fs, 1, &none, N, nthreads);
}
