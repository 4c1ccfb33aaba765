/* Fused CPU kernels for a WSN training step (optional: wsn falls back to torch operations when this
 * module is not built). They compute exactly what the torch path computes, operation for operation,
 * so both give the same bits:
 *
 *   select(...)  the exact top-k of |scores| (k largest, ties by lower flat index), then in one pass
 *                mask = that set and w_eff = weight * (float)mask
 *   grads(...)   grad_weight = grad * (float)(mask & free), grad_scores = (grad * weight) * sign(scores)
 *   adam(...)    Adam's update of weight and scores in one pass (nn/adam.py holds the definition and
 *                its torch reference): from the gradient of w_eff (the two gradients above are formed
 *                in registers, never stored) or from given gradients; frozen weights (free == 0) and
 *                their moments are not written
 *
 * Tensors are passed as raw addresses of contiguous float32 / uint8 (bool) buffers owned by torch;
 * the GIL is released while the loops run. Layers of at least PARALLEL_MIN weights are split into
 * `threads` contiguous parts run on as many POSIX threads (the results do not depend on the split).
 * Built with -ffp-contract=off so no multiply is fused into an FMA (the results must equal torch's
 * separate IEEE operations) and -fno-math-errno so sqrtf vectorises (it changes no value).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define WSN_X86 1
#define VECTORISED __attribute__((target_clones("avx2", "default")))
#else
#define VECTORISED
#endif

#define FLT_LARGEST 3.4028234663852886e38f
#define PARALLEL_MIN (1 << 18) /* weights: below, one thread (a thread start costs ~20 us) */
#define MAX_THREADS 64
#define PART_ALIGN 64 /* parts start on multiples of this many elements */

/* ---- threads ------------------------------------------------------------------------------------ */

typedef void (*part_fn)(void *ctx, Py_ssize_t a, Py_ssize_t b, int part);

typedef struct {
    part_fn fn;
    void *ctx;
    Py_ssize_t a, b;
    int part;
} part_job;

static void *run_part(void *arg) {
    part_job *j = (part_job *)arg;
    j->fn(j->ctx, j->a, j->b, j->part);
    return NULL;
}

/* How many parts n elements are split into on `threads` threads. */
static int n_parts(Py_ssize_t n, int threads) {
    if (threads < 1 || n < PARALLEL_MIN) return 1;
    return threads > MAX_THREADS ? MAX_THREADS : threads;
}

/* Part p of n elements in `parts` parts: [*a, *b). */
static void part_range(Py_ssize_t n, int parts, int p, Py_ssize_t *a, Py_ssize_t *b) {
    Py_ssize_t size = ((n + parts - 1) / parts + PART_ALIGN - 1) / PART_ALIGN * PART_ALIGN;
    *a = size * p < n ? size * p : n;
    *b = size * (p + 1) < n ? size * (p + 1) : n;
}

/* fn over [0, n) in `parts` parts: parts 1.. on new threads, part 0 here (a part whose thread
 * cannot start runs here too). Called without the GIL. */
static void parallel_parts(part_fn fn, void *ctx, Py_ssize_t n, int parts) {
    pthread_t tid[MAX_THREADS];
    part_job jobs[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    for (int p = 0; p < parts; p++) {
        jobs[p].fn = fn;
        jobs[p].ctx = ctx;
        jobs[p].part = p;
        part_range(n, parts, p, &jobs[p].a, &jobs[p].b);
    }
    for (int p = 1; p < parts; p++)
        started[p] = pthread_create(&tid[p], NULL, run_part, &jobs[p]) == 0;
    run_part(&jobs[0]);
    for (int p = 1; p < parts; p++) {
        if (started[p]) pthread_join(tid[p], NULL);
        else run_part(&jobs[p]);
    }
}

/* ---- selection ---------------------------------------------------------------------------------- */

/* The band scan: how many |s| are above hi, how many are not finite, and the values in (lo, hi]
 * copied into work[] (their order does not matter) with, when pos is given, their flat indices
 * (offset + i, ascending) into pos[]. Portable version. */
static Py_ssize_t band_scan_plain(const float *s, Py_ssize_t n, float lo, float hi, float *work, int32_t *pos,
                                  Py_ssize_t offset, Py_ssize_t *above, Py_ssize_t *nonfinite) {
    Py_ssize_t band = 0, up = 0, bad = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        float v = fabsf(s[i]);
        bad += !(v <= FLT_LARGEST);
        up += v > hi;
        if ((v > lo) & (v <= hi)) {
            if (pos) pos[band] = (int32_t)(offset + i);
            work[band++] = v;
        }
    }
    *above = up;
    *nonfinite = bad;
    return band;
}

#ifdef WSN_X86
/* The same with AVX2: eight values per compare; only blocks that hold band values are unpacked. */
__attribute__((target("avx2,popcnt"))) static Py_ssize_t band_scan_avx2(const float *s, Py_ssize_t n, float lo,
                                                                      float hi, float *work, int32_t *pos,
                                                                      Py_ssize_t offset, Py_ssize_t *above,
                                                                      Py_ssize_t *nonfinite) {
    const __m256 vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi), vmax = _mm256_set1_ps(FLT_LARGEST);
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    Py_ssize_t band = 0, up = 0, bad = 0, i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_and_ps(_mm256_loadu_ps(s + i), absmask);
        up += _mm_popcnt_u32((unsigned)_mm256_movemask_ps(_mm256_cmp_ps(v, vhi, _CMP_GT_OQ)));
        bad += _mm_popcnt_u32((unsigned)_mm256_movemask_ps(_mm256_cmp_ps(v, vmax, _CMP_NLE_UQ)));
        unsigned in = (unsigned)_mm256_movemask_ps(
            _mm256_and_ps(_mm256_cmp_ps(v, vlo, _CMP_GT_OQ), _mm256_cmp_ps(v, vhi, _CMP_LE_OQ)));
        while (in) {
            int j = __builtin_ctz(in);
            if (pos) pos[band] = (int32_t)(offset + i + j);
            work[band++] = fabsf(s[i + j]);
            in &= in - 1;
        }
    }
    Py_ssize_t up2 = 0, bad2 = 0;
    band += band_scan_plain(s + i, n - i, lo, hi, work + band, pos ? pos + band : NULL, offset + i, &up2, &bad2);
    *above = up + up2;
    *nonfinite = bad + bad2;
    return band;
}
#endif

static Py_ssize_t band_scan_one(const float *s, Py_ssize_t n, float lo, float hi, float *work, int32_t *pos,
                                Py_ssize_t offset, Py_ssize_t *above, Py_ssize_t *nonfinite) {
#ifdef WSN_X86
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt"))
        return band_scan_avx2(s, n, lo, hi, work, pos, offset, above, nonfinite);
#endif
    return band_scan_plain(s, n, lo, hi, work, pos, offset, above, nonfinite);
}

/* What a band scan split in parts found; each part p wrote its values (and positions) from index
 * part_start(p) on, and `gather` moves them together. */
typedef struct {
    Py_ssize_t band[MAX_THREADS], above[MAX_THREADS], nonfinite[MAX_THREADS];
} scan_parts;

static Py_ssize_t gather(scan_parts *r, Py_ssize_t n, int parts, float *work, int32_t *pos, Py_ssize_t *above,
                         Py_ssize_t *nonfinite) {
    Py_ssize_t band = 0;
    *above = *nonfinite = 0;
    for (int p = 0; p < parts; p++) {
        Py_ssize_t a, b;
        part_range(n, parts, p, &a, &b);
        if (band != a) {
            memmove(work + band, work + a, (size_t)r->band[p] * sizeof(float));
            if (pos) memmove(pos + band, pos + a, (size_t)r->band[p] * sizeof(int32_t));
        }
        band += r->band[p];
        *above += r->above[p];
        *nonfinite += r->nonfinite[p];
    }
    return band;
}

typedef struct {
    const float *s;
    float lo, hi;
    float *work;
    scan_parts r;
} scan_job;

static void scan_part(void *ctx, Py_ssize_t a, Py_ssize_t b, int p) {
    scan_job *j = (scan_job *)ctx;
    j->r.band[p] = band_scan_one(j->s + a, b - a, j->lo, j->hi, j->work + a, NULL, a, &j->r.above[p],
                                 &j->r.nonfinite[p]);
}

/* The band scan over all of s in parts. */
static Py_ssize_t band_scan(const float *s, Py_ssize_t n, float lo, float hi, float *work, Py_ssize_t *above,
                            Py_ssize_t *nonfinite, int threads) {
    scan_job j = {.s = s, .lo = lo, .hi = hi, .work = work};
    int parts = n_parts(n, threads);
    parallel_parts(scan_part, &j, n, parts);
    return gather(&j.r, n, parts, work, NULL, above, nonfinite);
}

/* k-th largest (1-based) of a[0..m): quickselect, in place. */
static float kth_largest(float *a, Py_ssize_t m, Py_ssize_t k) {
    Py_ssize_t lo = 0, hi = m - 1, target = k - 1; /* index in descending order */
    while (lo < hi) {
        float pivot = a[lo + (hi - lo) / 2];
        Py_ssize_t i = lo, j = hi;
        while (i <= j) {
            while (a[i] > pivot) i++;
            while (a[j] < pivot) j--;
            if (i <= j) {
                float t = a[i];
                a[i] = a[j];
                a[j] = t;
                i++;
                j--;
            }
        }
        if (target <= j) hi = j;
        else if (target >= i) lo = i;
        else return a[target];
    }
    return a[target];
}

/* One pass: mask[i] = |s[i]| > t (or >= t), w_eff[i] = w[i] * mask. */
VECTORISED static void write_gt(const float *restrict s, const float *restrict w, float t, Py_ssize_t a, Py_ssize_t b,
                                uint8_t *restrict mask, float *restrict weff) {
    for (Py_ssize_t i = a; i < b; i++) {
        int32_t m = fabsf(s[i]) > t; /* int32, not uint8: gcc vectorises this form */
        mask[i] = (uint8_t)m;
        weff[i] = w[i] * (float)m;
    }
}

VECTORISED static void write_ge(const float *restrict s, const float *restrict w, float t, Py_ssize_t a, Py_ssize_t b,
                                uint8_t *restrict mask, float *restrict weff) {
    for (Py_ssize_t i = a; i < b; i++) {
        int32_t m = fabsf(s[i]) >= t;
        mask[i] = (uint8_t)m;
        weff[i] = w[i] * (float)m;
    }
}

typedef struct {
    const float *s, *w;
    float t;
    int ge;
    uint8_t *mask;
    float *weff;
} write_job;

static void write_part(void *ctx, Py_ssize_t a, Py_ssize_t b, int p) {
    write_job *j = (write_job *)ctx;
    (j->ge ? write_ge : write_gt)(j->s, j->w, j->t, a, b, j->mask, j->weff);
}

/* The first `missing` entries equal to t, in index order, join the mask (ties by lower index). */
static void add_ties(const float *s, const float *w, float t, Py_ssize_t n, Py_ssize_t missing, uint8_t *mask,
                     float *weff) {
    for (Py_ssize_t i = 0; i < n && missing > 0; i++) {
        if (fabsf(s[i]) == t) {
            mask[i] = 1;
            weff[i] = w[i] * 1.0f;
            missing--;
        }
    }
}

/* After a band scan in the Adam pass (`adam` with w_eff_next), mask and w_eff are right everywhere
 * but in the band, whose positions (ascending) are in pos[0..band): set those. */
static void fix_band(const float *s, const float *w, float t, const int32_t *pos, Py_ssize_t band, int ge,
                     Py_ssize_t missing, uint8_t *mask, float *weff) {
    for (Py_ssize_t j = 0; j < band; j++) {
        Py_ssize_t i = pos[j];
        float v = fabsf(s[i]);
        int m = v > t;
        if (v == t && (ge || missing > 0)) {
            m = 1;
            missing -= !ge;
        }
        mask[i] = (uint8_t)m;
        weff[i] = w[i] * (float)m;
    }
}

/* select(scores, weight, n, k, lo, hi, mode, mask, w_eff, work, threads, pos, band, above, nonfinite)
 *   -> (threshold, band_size, ties_at_threshold, used_band, nonfinite)
 * mode 0: no band yet (a full selection); 1: scan for the band (lo, hi] first; 2: the band was scanned
 * by the Adam pass, which left its values in work, their positions in pos and the counts given. */
static PyObject *select_mask(PyObject *self, PyObject *args) {
    unsigned long long ps, pw, pm, pe, pk, pp;
    Py_ssize_t n, k, pre_band, pre_above, pre_nonfinite;
    double lo, hi;
    int mode, threads;
    if (!PyArg_ParseTuple(args, "KKnnddiKKKiKnnn", &ps, &pw, &n, &k, &lo, &hi, &mode, &pm, &pe, &pk, &threads, &pp,
                          &pre_band, &pre_above, &pre_nonfinite))
        return NULL;
    const float *s = (const float *)(uintptr_t)ps, *w = (const float *)(uintptr_t)pw;
    uint8_t *mask = (uint8_t *)(uintptr_t)pm;
    float *weff = (float *)(uintptr_t)pe, *work = (float *)(uintptr_t)pk;
    const int32_t *pos = (const int32_t *)(uintptr_t)pp;
    float threshold = 0.0f;
    Py_ssize_t band = 0, gt = 0, nonfinite = 0, ties = 0, above = 0;
    int banded = 0;
    Py_BEGIN_ALLOW_THREADS
    if (mode == 1) {
        band = band_scan(s, n, (float)lo, (float)hi, work, &above, &nonfinite, threads);
    } else if (mode == 2) {
        band = pre_band, above = pre_above, nonfinite = pre_nonfinite;
    }
    if (mode && !nonfinite && k - above >= 1 && k - above <= band) {
        /* the k-th largest is among the few values in (lo, hi] */
        threshold = kth_largest(work, band, k - above);
        banded = 1;
        gt = above;
        for (Py_ssize_t i = 0; i < band; i++) {
            gt += work[i] > threshold;
            ties += work[i] == threshold;
        }
    }
    if (!banded && !nonfinite) { /* every value: the full selection */
        for (Py_ssize_t i = 0; i < n; i++) {
            float v = fabsf(s[i]);
            nonfinite += !(v <= FLT_LARGEST);
            work[i] = v;
        }
        band = n;
        if (!nonfinite && k >= 1 && k <= n) {
            threshold = kth_largest(work, n, k);
            for (Py_ssize_t i = 0; i < n; i++) {
                gt += work[i] > threshold;
                ties += work[i] == threshold;
            }
        }
    }
    if (!nonfinite) {
        /* usually every entry equal to the threshold is kept (>=); when more tie than the mask has
         * room for, the first ones by index join those above it */
        int ge = gt + ties == k;
        if (banded && mode == 2) {
            fix_band(s, w, threshold, pos, band, ge, k - gt, mask, weff);
        } else {
            write_job j = {.s = s, .w = w, .t = threshold, .ge = ge, .mask = mask, .weff = weff};
            parallel_parts(write_part, &j, n, n_parts(n, threads));
            if (!ge && k > gt) add_ties(s, w, threshold, n, k - gt, mask, weff);
        }
    }
    Py_END_ALLOW_THREADS
    return Py_BuildValue("(dnnin)", (double)threshold, band, ties, banded, nonfinite);
}

/* ---- straight-through gradients ----------------------------------------------------------------- */

typedef struct {
    const float *g, *w, *s;
    const uint8_t *mask, *fr;
    float *gw, *gs;
} grads_job;

VECTORISED static void grads_loop(const float *restrict g, const float *restrict w, const float *restrict s,
                                  const uint8_t *restrict mask, const uint8_t *restrict fr, Py_ssize_t a, Py_ssize_t b,
                                  float *restrict gw, float *restrict gs) {
    for (Py_ssize_t i = a; i < b; i++) {
        float sign = (float)((s[i] > 0.0f) - (s[i] < 0.0f)); /* torch.sign for finite scores */
        gw[i] = g[i] * (float)(mask[i] & fr[i]);
        gs[i] = (g[i] * w[i]) * sign;
    }
}

VECTORISED static void grads_loop_all_free(const float *restrict g, const float *restrict w, const float *restrict s,
                                           const uint8_t *restrict mask, Py_ssize_t a, Py_ssize_t b,
                                           float *restrict gw, float *restrict gs) {
    for (Py_ssize_t i = a; i < b; i++) {
        float sign = (float)((s[i] > 0.0f) - (s[i] < 0.0f));
        gw[i] = g[i] * (float)mask[i];
        gs[i] = (g[i] * w[i]) * sign;
    }
}

static void grads_part(void *ctx, Py_ssize_t a, Py_ssize_t b, int p) {
    grads_job *j = (grads_job *)ctx;
    if (j->fr) grads_loop(j->g, j->w, j->s, j->mask, j->fr, a, b, j->gw, j->gs);
    else grads_loop_all_free(j->g, j->w, j->s, j->mask, a, b, j->gw, j->gs);
}

/* grads(grad, weight, scores, mask, free, n, grad_weight, grad_scores, threads); free may be 0 */
static PyObject *grads(PyObject *self, PyObject *args) {
    unsigned long long pg, pw, ps, pm, pf, pgw, pgs;
    Py_ssize_t n;
    int threads;
    if (!PyArg_ParseTuple(args, "KKKKKnKKi", &pg, &pw, &ps, &pm, &pf, &n, &pgw, &pgs, &threads)) return NULL;
    grads_job j = {(const float *)(uintptr_t)pg, (const float *)(uintptr_t)pw, (const float *)(uintptr_t)ps,
                   (const uint8_t *)(uintptr_t)pm, (const uint8_t *)(uintptr_t)pf,  (float *)(uintptr_t)pgw,
                   (float *)(uintptr_t)pgs};
    Py_BEGIN_ALLOW_THREADS
    parallel_parts(grads_part, &j, n, n_parts(n, threads));
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* ---- Adam ------------------------------------------------------------------------------------------ */

/* Adam's per-step constants as float32, from the step count after its increment; nn/adam.py's
 * `adam_constants` computes the same values in Python (the same libm pow and sqrt). */
typedef struct {
    float b1, omb1, b2, omb2, c2, eps, lr_t;
} adam_k;

static adam_k adam_constants(double lr, double b1, double b2, double eps, double step) {
    adam_k c;
    double bc1 = 1.0 - pow(b1, step), bc2 = 1.0 - pow(b2, step);
    c.b1 = (float)b1;
    c.omb1 = (float)(1.0 - b1);
    c.b2 = (float)b2;
    c.omb2 = (float)(1.0 - b2);
    c.c2 = (float)(1.0 / sqrt(bc2));
    c.eps = (float)eps;
    c.lr_t = (float)(lr / bc1);
    return c;
}

/* keep (all ones or all zeros) ? a : b, bit for bit; written so that gcc vectorises it */
static inline float pick(uint32_t keep, float a, float b) {
    uint32_t ua, ub;
    memcpy(&ua, &a, 4);
    memcpy(&ub, &b, 4);
    ua = (ua & keep) | (ub & ~keep);
    memcpy(&a, &ua, 4);
    return a;
}

/* x, or +0 where |x| is below the smallest normal float32 (NaN kept) */
static inline float flush(float x) { return pick(-(uint32_t)!(fabsf(x) < FLT_MIN), x, 0.0f); }

/* The update of one element, in the reference's order (nn/adam.py `adam_reference`):
 *   m' = flush(m*b1 + g*(1-b1));  v' = flush(v*b2 + (g*g)*(1-b2));  p' = p - (m' / (sqrt(v')*c2 + eps)) * lr_t */
#define ADAM_ELEM(p, g, m, v, c, p1, m1, v1)                                  \
    do {                                                                      \
        m1 = flush((m) * (c).b1 + (g) * (c).omb1);                            \
        v1 = flush((v) * (c).b2 + ((g) * (g)) * (c).omb2);                    \
        p1 = (p) - ((m1) / (sqrtf(v1) * (c).c2 + (c).eps)) * (c).lr_t;        \
    } while (0)

/* From the gradient of w_eff: gw = g * mask, gs = (g * w) * sign(s), then both updates; elements
 * with fr[i] == 0 keep weight and moments as they are (the same bits written back). Then, for the next
 * step's selection: mask[i] = |s'| > hi (the band's top; right outside the band) and w_eff = w' * mask.
 * mask is read and written at the same index, so it is not restrict. */
#define ADAM_FUSED_BODY(KEEP)                                                   \
    float gi = g[i], wi = w[i], si = s[i], mwi = mw[i], vwi = vw[i];            \
    float sign = (float)((si > 0.0f) - (si < 0.0f));                            \
    float gs = (gi * wi) * sign, gw = gi * (float)mask[i];                      \
    float w1, m1, v1, s1, n1, u1;                                               \
    ADAM_ELEM(wi, gw, mwi, vwi, cw, w1, m1, v1);                                \
    ADAM_ELEM(si, gs, ms[i], vs[i], cs, s1, n1, u1);                            \
    uint32_t keep = KEEP;                                                       \
    w1 = pick(keep, w1, wi);                                                    \
    w[i] = w1;                                                                  \
    mw[i] = pick(keep, m1, mwi);                                                \
    vw[i] = pick(keep, v1, vwi);                                                \
    s[i] = s1;                                                                  \
    ms[i] = n1;                                                                 \
    vs[i] = u1;                                                                 \
    int32_t next = fabsf(s1) > hi;                                              \
    mask[i] = (uint8_t)next;                                                    \
    weff[i] = w1 * (float)next;

VECTORISED static void adam_fused_loop(const float *restrict g, uint8_t *mask, const uint8_t *restrict fr, Py_ssize_t a,
                                       Py_ssize_t b, float *restrict w, float *restrict s, float *restrict mw,
                                       float *restrict vw, float *restrict ms, float *restrict vs, adam_k cw,
                                       adam_k cs, float hi, float *restrict weff) {
    for (Py_ssize_t i = a; i < b; i++) {
        ADAM_FUSED_BODY(-(uint32_t)fr[i])
    }
}

VECTORISED static void adam_fused_loop_all_free(const float *restrict g, uint8_t *mask, Py_ssize_t a, Py_ssize_t b,
                                                float *restrict w, float *restrict s, float *restrict mw,
                                                float *restrict vw, float *restrict ms, float *restrict vs, adam_k cw,
                                                adam_k cs, float hi, float *restrict weff) {
    for (Py_ssize_t i = a; i < b; i++) {
        ADAM_FUSED_BODY(0xFFFFFFFFu)
    }
}

/* From given gradients (after a data-parallel all-reduce): the same updates. */
#define ADAM_GRADS_BODY(KEEP)                                                   \
    float gw = gwv[i], gs = gsv[i], wi = w[i], mwi = mw[i], vwi = vw[i];        \
    float w1, m1, v1, s1, n1, u1;                                               \
    ADAM_ELEM(wi, gw, mwi, vwi, cw, w1, m1, v1);                                \
    ADAM_ELEM(s[i], gs, ms[i], vs[i], cs, s1, n1, u1);                          \
    uint32_t keep = KEEP;                                                       \
    w[i] = pick(keep, w1, wi);                                                  \
    mw[i] = pick(keep, m1, mwi);                                                \
    vw[i] = pick(keep, v1, vwi);                                                \
    s[i] = s1;                                                                  \
    ms[i] = n1;                                                                 \
    vs[i] = u1;

VECTORISED static void adam_grads_loop(const float *restrict gwv, const float *restrict gsv,
                                       const uint8_t *restrict fr, Py_ssize_t a, Py_ssize_t b, float *restrict w,
                                       float *restrict s, float *restrict mw, float *restrict vw, float *restrict ms,
                                       float *restrict vs, adam_k cw, adam_k cs) {
    for (Py_ssize_t i = a; i < b; i++) {
        ADAM_GRADS_BODY(-(uint32_t)fr[i])
    }
}

VECTORISED static void adam_grads_loop_all_free(const float *restrict gwv, const float *restrict gsv, Py_ssize_t a,
                                                Py_ssize_t b, float *restrict w, float *restrict s,
                                                float *restrict mw, float *restrict vw, float *restrict ms,
                                                float *restrict vs, adam_k cw, adam_k cs) {
    for (Py_ssize_t i = a; i < b; i++) {
        ADAM_GRADS_BODY(0xFFFFFFFFu)
    }
}

#define ADAM_BLOCK 512 /* elements updated, then band-scanned while still in L1 */

typedef struct {
    const float *g, *gw_in, *gs_in;
    uint8_t *mask;
    const uint8_t *fr;
    float *w, *s, *mw, *vw, *ms, *vs, *weff, *work;
    int32_t *pos;
    float lo, hi;
    adam_k cw, cs;
    scan_parts r;
} adam_job;

static void adam_part(void *ctx, Py_ssize_t a, Py_ssize_t b, int p) {
    adam_job *j = (adam_job *)ctx;
    if (j->gw_in) {
        if (j->fr)
            adam_grads_loop(j->gw_in, j->gs_in, j->fr, a, b, j->w, j->s, j->mw, j->vw, j->ms, j->vs, j->cw, j->cs);
        else
            adam_grads_loop_all_free(j->gw_in, j->gs_in, a, b, j->w, j->s, j->mw, j->vw, j->ms, j->vs, j->cw, j->cs);
        return;
    }
    Py_ssize_t band = 0, above = 0, nonfinite = 0;
    for (Py_ssize_t c = a; c < b; c += ADAM_BLOCK) {
        Py_ssize_t e = c + ADAM_BLOCK < b ? c + ADAM_BLOCK : b, up = 0, bad = 0;
        if (j->fr)
            adam_fused_loop(j->g, j->mask, j->fr, c, e, j->w, j->s, j->mw, j->vw, j->ms, j->vs, j->cw, j->cs, j->hi,
                            j->weff);
        else
            adam_fused_loop_all_free(j->g, j->mask, c, e, j->w, j->s, j->mw, j->vw, j->ms, j->vs, j->cw, j->cs,
                                     j->hi, j->weff);
        band += band_scan_one(j->s + c, e - c, j->lo, j->hi, j->work + a + band, j->pos + a + band, c, &up, &bad);
        above += up;
        nonfinite += bad;
    }
    j->r.band[p] = band;
    j->r.above[p] = above;
    j->r.nonfinite[p] = nonfinite;
}

/* adam(grad, mask, grad_weight, grad_scores, free, n, weight, scores, exp_avg_w, exp_avg_sq_w, exp_avg_s,
 *      exp_avg_sq_s, step_w, step_s, lr, beta1, beta2, eps, threads, w_eff, lo, hi, work, pos)
 * Either grad and mask (the gradient of w_eff and the layer's mask; `free` may be 0: nothing frozen),
 * then also the next step's mask and w_eff (right outside (lo, hi]) and the band scan of the new
 * scores: values in work, positions in pos -> (band, above, nonfinite); or grad_weight and grad_scores
 * (grad, mask, w_eff, work, pos 0) -> None. Both step counts (float32) are incremented first. */
static PyObject *adam(PyObject *self, PyObject *args) {
    unsigned long long pg, pm, pgw, pgs, pf, pw, ps, pmw, pvw, pms, pvs, psw, pss, pe, pk, pp;
    Py_ssize_t n;
    double lr, b1, b2, eps, lo, hi;
    int threads;
    if (!PyArg_ParseTuple(args, "KKKKKnKKKKKKKKddddiKddKK", &pg, &pm, &pgw, &pgs, &pf, &n, &pw, &ps, &pmw, &pvw,
                          &pms, &pvs, &psw, &pss, &lr, &b1, &b2, &eps, &threads, &pe, &lo, &hi, &pk, &pp))
        return NULL;
    if (pgw ? !pgs : (!pg || !pm || !pe || !pk || !pp)) {
        PyErr_SetString(PyExc_ValueError, "adam: either grad, mask, w_eff, work and pos, or both gradients");
        return NULL;
    }
    float *step_w = (float *)(uintptr_t)psw, *step_s = (float *)(uintptr_t)pss;
    *step_w += 1.0f;
    *step_s += 1.0f;
    adam_job j = {
        .g = (const float *)(uintptr_t)pg,
        .gw_in = (const float *)(uintptr_t)pgw,
        .gs_in = (const float *)(uintptr_t)pgs,
        .mask = (uint8_t *)(uintptr_t)pm,
        .fr = (const uint8_t *)(uintptr_t)pf,
        .w = (float *)(uintptr_t)pw,
        .s = (float *)(uintptr_t)ps,
        .mw = (float *)(uintptr_t)pmw,
        .vw = (float *)(uintptr_t)pvw,
        .ms = (float *)(uintptr_t)pms,
        .vs = (float *)(uintptr_t)pvs,
        .weff = (float *)(uintptr_t)pe,
        .work = (float *)(uintptr_t)pk,
        .pos = (int32_t *)(uintptr_t)pp,
        .lo = (float)lo,
        .hi = (float)hi,
        .cw = adam_constants(lr, b1, b2, eps, (double)*step_w),
        .cs = adam_constants(lr, b1, b2, eps, (double)*step_s),
    };
    int parts = n_parts(n, threads);
    Py_ssize_t band = 0, above = 0, nonfinite = 0;
    Py_BEGIN_ALLOW_THREADS
    parallel_parts(adam_part, &j, n, parts);
    if (!j.gw_in) band = gather(&j.r, n, parts, j.work, j.pos, &above, &nonfinite);
    Py_END_ALLOW_THREADS
    if (j.gw_in) Py_RETURN_NONE;
    return Py_BuildValue("(nnn)", band, above, nonfinite);
}

static PyMethodDef methods[] = {
    {"select", select_mask, METH_VARARGS, "exact top-k mask of |scores| and the masked weight, in one pass"},
    {"grads", grads, METH_VARARGS, "straight-through gradients of weight and scores, fused"},
    {"adam", adam, METH_VARARGS, "Adam's update of a masked layer's weight and scores, in one pass"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels", "Fused CPU kernels for WSN training steps.",
                                    -1, methods};

PyMODINIT_FUNC PyInit__kernels(void) {
#ifdef WSN_X86
    __builtin_cpu_init(); /* a module loaded with dlopen may run before libgcc filled in the CPU model */
#endif
    return PyModule_Create(&module);
}
