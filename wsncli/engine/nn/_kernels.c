/* Fused CPU kernels for a WSN training step (optional: wsn falls back to torch operations when this
 * module is not built). They compute exactly what the torch path computes, operation for operation,
 * so both give the same bits:
 *
 *   select(...)  the exact top-k of |scores| (k largest, ties by lower flat index), then in one pass
 *                mask = that set, trainable = mask & free, w_eff = weight * (float)mask
 *   grads(...)   grad_weight = grad * (float)trainable, grad_scores = (grad * weight) * sign(scores)
 *
 * Tensors are passed as raw addresses of contiguous float32 / uint8 (bool) buffers owned by torch;
 * the GIL is released while the loops run. Built with -ffp-contract=off so no multiply is fused
 * into an FMA (the results must equal torch's separate IEEE operations).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
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

/* The band scan: how many |s| are above hi, how many are not finite, and the values in (lo, hi]
 * copied into work[] (their order does not matter). Portable version. */
static Py_ssize_t band_scan_plain(const float *s, Py_ssize_t n, float lo, float hi, float *work, Py_ssize_t *above,
                                  Py_ssize_t *nonfinite) {
    Py_ssize_t band = 0, up = 0, bad = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        float v = fabsf(s[i]);
        bad += !(v <= FLT_LARGEST);
        up += v > hi;
        if ((v > lo) & (v <= hi)) work[band++] = v;
    }
    *above = up;
    *nonfinite = bad;
    return band;
}

#ifdef WSN_X86
/* The same with AVX2: eight values per compare; only blocks that hold band values are unpacked. */
__attribute__((target("avx2,popcnt"))) static Py_ssize_t band_scan_avx2(const float *s, Py_ssize_t n, float lo, float hi, float *work,
                                                                      Py_ssize_t *above, Py_ssize_t *nonfinite) {
    const __m256 vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi), vmax = _mm256_set1_ps(FLT_LARGEST);
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    Py_ssize_t band = 0, up = 0, bad = 0, i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_and_ps(_mm256_loadu_ps(s + i), absmask);
        up += _mm_popcnt_u32((unsigned)_mm256_movemask_ps(_mm256_cmp_ps(v, vhi, _CMP_GT_OQ)));
        bad += _mm_popcnt_u32((unsigned)_mm256_movemask_ps(_mm256_cmp_ps(v, vmax, _CMP_NLE_UQ)));
        unsigned in = (unsigned)_mm256_movemask_ps(_mm256_and_ps(_mm256_cmp_ps(v, vlo, _CMP_GT_OQ), _mm256_cmp_ps(v, vhi, _CMP_LE_OQ)));
        while (in) {
            int j = __builtin_ctz(in);
            work[band++] = fabsf(s[i + j]);
            in &= in - 1;
        }
    }
    Py_ssize_t up2 = 0, bad2 = 0;
    band += band_scan_plain(s + i, n - i, lo, hi, work + band, &up2, &bad2);
    *above = up + up2;
    *nonfinite = bad + bad2;
    return band;
}
#endif

static Py_ssize_t band_scan(const float *s, Py_ssize_t n, float lo, float hi, float *work, Py_ssize_t *above, Py_ssize_t *nonfinite) {
#ifdef WSN_X86
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt"))
        return band_scan_avx2(s, n, lo, hi, work, above, nonfinite);
#endif
    return band_scan_plain(s, n, lo, hi, work, above, nonfinite);
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
                float t = a[i]; a[i] = a[j]; a[j] = t;
                i++; j--;
            }
        }
        if (target <= j) hi = j;
        else if (target >= i) lo = i;
        else return a[target];
    }
    return a[target];
}

/* mask[i] = |s[i]| > t, trainable[i] = mask & free, w_eff[i] = w[i] * mask: three simple loops
 * the compiler vectorises. */
VECTORISED static void write_masks(const float *restrict s, const float *restrict w, const uint8_t *restrict fr, float t, Py_ssize_t n,
                                   uint8_t *restrict mask, uint8_t *restrict tr, float *restrict weff) {
    for (Py_ssize_t i = 0; i < n; i++)
        mask[i] = fabsf(s[i]) > t;
    for (Py_ssize_t i = 0; i < n; i++)
        weff[i] = w[i] * (float)mask[i];
    if (fr) {
        for (Py_ssize_t i = 0; i < n; i++)
            tr[i] = mask[i] & fr[i];
    } else {
        memcpy(tr, mask, (size_t)n);
    }
}

/* The first `missing` entries equal to t, in index order, join the mask (ties by lower index). */
static void add_ties(const float *s, const float *w, const uint8_t *fr, float t, Py_ssize_t n, Py_ssize_t missing,
                     uint8_t *mask, uint8_t *tr, float *weff) {
    for (Py_ssize_t i = 0; i < n && missing > 0; i++) {
        if (fabsf(s[i]) == t) {
            mask[i] = 1;
            tr[i] = fr ? fr[i] : 1;
            weff[i] = w[i] * 1.0f;
            missing--;
        }
    }
}

/* select(scores, weight, free, n, k, lo, hi, use_band, mask, trainable, w_eff, work)
 *   -> (threshold, band_size, ties_at_threshold, used_band, nonfinite) */
static PyObject *select_mask(PyObject *self, PyObject *args) {
    unsigned long long ps, pw, pf, pm, pt, pe, pk;
    Py_ssize_t n, k;
    double lo, hi;
    int use_band;
    if (!PyArg_ParseTuple(args, "KKKnnddpKKKK", &ps, &pw, &pf, &n, &k, &lo, &hi, &use_band, &pm, &pt, &pe, &pk))
        return NULL;
    const float *s = (const float *)(uintptr_t)ps, *w = (const float *)(uintptr_t)pw;
    const uint8_t *fr = (const uint8_t *)(uintptr_t)pf;
    uint8_t *mask = (uint8_t *)(uintptr_t)pm, *tr = (uint8_t *)(uintptr_t)pt;
    float *weff = (float *)(uintptr_t)pe, *work = (float *)(uintptr_t)pk;
    float threshold = 0.0f;
    Py_ssize_t band = 0, gt = 0, nonfinite = 0, ties = 0;
    int banded = 0;
    Py_BEGIN_ALLOW_THREADS
    float flo = (float)lo, fhi = (float)hi;
    if (use_band) { /* the k-th largest is looked for among the few values in (lo, hi] */
        Py_ssize_t above = 0;
        band = band_scan(s, n, flo, fhi, work, &above, &nonfinite);
        Py_ssize_t need = k - above;
        if (!nonfinite && need >= 1 && need <= band) {
            threshold = kth_largest(work, band, need);
            banded = 1;
            gt = above;
            for (Py_ssize_t i = 0; i < band; i++) {
                gt += work[i] > threshold;
                ties += work[i] == threshold;
            }
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
        write_masks(s, w, fr, threshold, n, mask, tr, weff);
        if (k > gt)
            add_ties(s, w, fr, threshold, n, k - gt, mask, tr, weff);
    }
    Py_END_ALLOW_THREADS
    return Py_BuildValue("(dnnin)", (double)threshold, band, ties, banded, nonfinite);
}

/* grads(grad, weight, scores, trainable, n, grad_weight, grad_scores) */
VECTORISED static void grads_loop(const float *restrict g, const float *restrict w, const float *restrict s, const uint8_t *restrict t,
                       Py_ssize_t n, float *restrict gw, float *restrict gs) {
    for (Py_ssize_t i = 0; i < n; i++) {
        float sign = (float)((s[i] > 0.0f) - (s[i] < 0.0f)); /* torch.sign for finite scores */
        gw[i] = g[i] * (float)t[i];
        gs[i] = (g[i] * w[i]) * sign;
    }
}

static PyObject *grads(PyObject *self, PyObject *args) {
    unsigned long long pg, pw, ps, pt, pgw, pgs;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "KKKKnKK", &pg, &pw, &ps, &pt, &n, &pgw, &pgs))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    grads_loop((const float *)(uintptr_t)pg, (const float *)(uintptr_t)pw, (const float *)(uintptr_t)ps,
               (const uint8_t *)(uintptr_t)pt, n, (float *)(uintptr_t)pgw, (float *)(uintptr_t)pgs);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"select", select_mask, METH_VARARGS, "exact top-k mask of |scores|, trainable mask and masked weight, fused"},
    {"grads", grads, METH_VARARGS, "straight-through gradients of weight and scores, fused"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels", "Fused CPU kernels for WSN training steps.", -1, methods};

PyMODINIT_FUNC PyInit__kernels(void) {
#ifdef WSN_X86
    __builtin_cpu_init(); /* a module loaded with dlopen may run before libgcc filled in the CPU model */
#endif
    return PyModule_Create(&module);
}
