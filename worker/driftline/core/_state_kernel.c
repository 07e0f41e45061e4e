/* The per-event state update of driftline.core.state, in C.
 *
 * Why: the numpy update (FeatureState._apply_rounds) pays numpy's per-call overhead on
 * every round and block, about 3 to 4 microseconds per event on realistic batches, which
 * is a third of the whole model's cost.  Here each event is applied in arrival order,
 * straight into the customer's packed record, in ~0.1 microseconds.  The semantics are
 * the module docstring's; the numpy path stays as the fallback (no compiler) and as the
 * oracle the tests compare this kernel with.
 *
 * Layout: a customer's record is the packed little-endian numpy record of FeatureState
 * (fields at the byte offsets given by the caller, possibly unaligned: every access goes
 * through memcpy).  Categorical latest values live in a separate numpy object array; the
 * caller passes its address (C-contiguous, checked on the Python side) so that this
 * kernel can hold and release references as it updates them.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define NO_TIME INT64_MIN

enum { KIND_COUNT = 0, KIND_SUM = 1, KIND_MIN = 2, KIND_MAX = 3 };
enum { DT_INT32 = 0, DT_INT64 = 1, DT_FLOAT64 = 2 };
/* Columns of one row of the blocks table. */
enum { B_KIND, B_WINDOWED, B_DTYPE, B_KEYS, B_BUCKETS, B_OFFSET, B_FIRST_KEY, B_COLUMNS };
#define MAX_WINDOWS 64

static inline int64_t floordiv(int64_t a, int64_t b) {
    int64_t q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

static inline int64_t floormod(int64_t a, int64_t b) {
    int64_t r = a % b;
    return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r;
}

static inline int64_t get_i64(const char *p) { int64_t v; memcpy(&v, p, 8); return v; }
static inline void set_i64(char *p, int64_t v) { memcpy(p, &v, 8); }
static inline double get_f64(const char *p) { double v; memcpy(&v, p, 8); return v; }
static inline void set_f64(char *p, double v) { memcpy(p, &v, 8); }
static inline int32_t get_i32(const char *p) { int32_t v; memcpy(&v, p, 4); return v; }
static inline void set_i32(char *p, int32_t v) { memcpy(p, &v, 4); }

static inline size_t dtype_size(int64_t dtype) { return dtype == DT_INT32 ? 4 : 8; }

/* Reads a cell as a double (counts are exact: |count| < 2**53). */
static inline double get_cell(const char *p, int64_t dtype) {
    switch (dtype) {
    case DT_INT32: return (double)get_i32(p);
    case DT_INT64: return (double)get_i64(p);
    default: return get_f64(p);
    }
}

static inline void set_identity(char *p, int64_t kind, int64_t dtype) {
    if (dtype == DT_INT32) set_i32(p, 0);
    else if (dtype == DT_INT64) set_i64(p, 0);
    else set_f64(p, kind == KIND_MIN ? INFINITY : kind == KIND_MAX ? -INFINITY : 0.0);
}

typedef struct {
    Py_buffer b;
    int held;
} Buf;

static int get_buf(PyObject *obj, Buf *out, int writable, Py_ssize_t min_bytes, const char *name) {
    if (PyObject_GetBuffer(obj, &out->b, (writable ? PyBUF_WRITABLE : 0) | PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    out->held = 1;
    if (out->b.len < min_bytes) {
        PyErr_Format(PyExc_ValueError, "%s: %zd bytes, expected at least %zd", name, out->b.len,
                     min_bytes);
        return -1;
    }
    return 0;
}

static void release(Buf *bufs, int n) {
    for (int i = 0; i < n; i++)
        if (bufs[i].held) PyBuffer_Release(&bufs[i].b);
}

/* Arguments: see FeatureState._apply_native, which is the only caller. */
static PyObject *apply_events(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    enum {
        A_RECORDS, A_EMPTY, A_SLOTS, A_TIMES, A_TYPES, A_VALUES, A_OFFSETS, A_LATEST_MASK,
        A_LATEST_VALUES, A_EVICT_AFTER, A_LAYOUT, A_BLOCKS, A_KEY_WINDOW, A_KEY_FIELD,
        A_TYPE_TABLE, A_WINDOWS, A_LATEST_COLS, A_CATEGORIES_AT, A_BATCH_CATEGORIES_AT,
        A_CATEGORY_OUT_AT, A_N_CATEGORIES, A_CLOCK_OUT, A_FIRST_OUT, A_TOTALS_OUT, A_TIME_OUT,
        A_VALUE_OUT, A_COUNT
    };
    if (nargs != A_COUNT) {
        PyErr_Format(PyExc_TypeError, "apply_events takes %d arguments (%zd given)", A_COUNT,
                     nargs);
        return NULL;
    }
    long long evict_after = PyLong_AsLongLong(args[A_EVICT_AFTER]);
    Py_ssize_t categories_at = PyLong_AsSsize_t(args[A_CATEGORIES_AT]);
    Py_ssize_t batch_categories_at = PyLong_AsSsize_t(args[A_BATCH_CATEGORIES_AT]);
    Py_ssize_t category_out_at = PyLong_AsSsize_t(args[A_CATEGORY_OUT_AT]);
    Py_ssize_t n_cat = PyLong_AsSsize_t(args[A_N_CATEGORIES]);
    if (PyErr_Occurred()) return NULL;

    Buf bufs[A_COUNT];
    memset(bufs, 0, sizeof bufs);
    PyObject *result = NULL;
    const int buffers[] = {A_RECORDS, A_EMPTY, A_SLOTS, A_TIMES, A_TYPES, A_VALUES,
                           A_LATEST_MASK, A_LATEST_VALUES, A_LAYOUT, A_BLOCKS, A_KEY_WINDOW,
                           A_KEY_FIELD, A_TYPE_TABLE, A_WINDOWS, A_LATEST_COLS, A_CLOCK_OUT,
                           A_FIRST_OUT, A_TOTALS_OUT, A_TIME_OUT, A_VALUE_OUT};
    const int writable[] = {A_RECORDS, A_CLOCK_OUT, A_FIRST_OUT, A_TOTALS_OUT, A_TIME_OUT,
                            A_VALUE_OUT};
    for (size_t i = 0; i < sizeof buffers / sizeof buffers[0]; i++) {
        int a = buffers[i], w = 0;
        for (size_t j = 0; j < sizeof writable / sizeof writable[0]; j++) w |= writable[j] == a;
        if (get_buf(args[a], &bufs[a], w, 0, "argument") < 0) goto done;
    }
    int have_offsets = args[A_OFFSETS] != Py_None;
    if (have_offsets && get_buf(args[A_OFFSETS], &bufs[A_OFFSETS], 0, 0, "offsets") < 0) goto done;

    char *records = bufs[A_RECORDS].b.buf;
    const char *empty = bufs[A_EMPTY].b.buf;
    const Py_ssize_t itemsize = bufs[A_EMPTY].b.len;
    const Py_ssize_t capacity = itemsize ? bufs[A_RECORDS].b.len / itemsize : 0;
    const int64_t *slots = bufs[A_SLOTS].b.buf;
    const Py_ssize_t n_events = bufs[A_SLOTS].b.len / 8;
    const int64_t *times = bufs[A_TIMES].b.buf;
    const int8_t *types = bufs[A_TYPES].b.buf;
    const double *values = bufs[A_VALUES].b.buf;
    const int64_t *offsets = have_offsets ? bufs[A_OFFSETS].b.buf : NULL;
    const uint8_t *latest_mask = bufs[A_LATEST_MASK].b.buf;
    const double *latest_values = bufs[A_LATEST_VALUES].b.buf;
    const int64_t *layout = bufs[A_LAYOUT].b.buf;
    const int64_t *blocks = bufs[A_BLOCKS].b.buf;
    const Py_ssize_t n_blocks = bufs[A_BLOCKS].b.len / (8 * B_COLUMNS);
    const int64_t *key_window = bufs[A_KEY_WINDOW].b.buf;
    const int64_t *key_field = bufs[A_KEY_FIELD].b.buf;
    const uint8_t *type_table = bufs[A_TYPE_TABLE].b.buf;
    const int64_t *windows = bufs[A_WINDOWS].b.buf;
    const Py_ssize_t n_windows = bufs[A_WINDOWS].b.len / 8;
    const int64_t *latest_cols = bufs[A_LATEST_COLS].b.buf;
    int64_t *clock_out = bufs[A_CLOCK_OUT].b.buf;
    int64_t *first_out = bufs[A_FIRST_OUT].b.buf;
    double *totals_out = bufs[A_TOTALS_OUT].b.buf;
    int64_t *time_out = bufs[A_TIME_OUT].b.buf;
    double *value_out = bufs[A_VALUE_OUT].b.buf;

    /* layout: clock, first_seen, applied_offset, latest_time offsets; L; latest_value
       offset; V; buckets per window; number of fields + 1 (values' columns); keys. */
    if (bufs[A_LAYOUT].b.len < 10 * 8) {
        PyErr_SetString(PyExc_ValueError, "layout: 10 int64 expected");
        goto done;
    }
    const int64_t clock_at = layout[0], first_at = layout[1], applied_at = layout[2],
                  latest_time_at = layout[3], n_latest = layout[4], latest_value_at = layout[5],
                  n_values = layout[6], n = layout[7], n_columns = layout[8], n_keys = layout[9];
    if (n_windows > MAX_WINDOWS || n <= 0) {
        PyErr_SetString(PyExc_ValueError, "too many windows, or no bucket");
        goto done;
    }
    if (bufs[A_TIMES].b.len != n_events * 8 || bufs[A_TYPES].b.len != n_events ||
        bufs[A_VALUES].b.len != n_events * n_columns * 8 ||
        (have_offsets && bufs[A_OFFSETS].b.len != n_events * 8) ||
        bufs[A_LATEST_MASK].b.len != n_events * n_latest ||
        bufs[A_LATEST_VALUES].b.len != n_events * n_values * 8 ||
        bufs[A_CLOCK_OUT].b.len != n_events * 8 || bufs[A_FIRST_OUT].b.len != n_events * 8 ||
        bufs[A_TOTALS_OUT].b.len != n_events * n_keys * 8 ||
        bufs[A_TIME_OUT].b.len != n_events * n_latest * 8 ||
        bufs[A_VALUE_OUT].b.len != n_events * n_values * 8 ||
        bufs[A_LATEST_COLS].b.len != n_latest * 2 * 8) {
        PyErr_SetString(PyExc_ValueError, "apply_events: arrays of inconsistent sizes");
        goto done;
    }
    for (Py_ssize_t e = 0; e < n_events; e++) {
        if (slots[e] < 0 || slots[e] >= capacity) {
            PyErr_Format(PyExc_IndexError, "slot %lld out of range", (long long)slots[e]);
            goto done;
        }
    }

    PyObject **categories = (PyObject **)categories_at;
    PyObject *const *batch_categories = (PyObject *const *)batch_categories_at;
    PyObject **category_out = (PyObject **)category_out_at;

    int64_t now_b[MAX_WINDOWS], then_b[MAX_WINDOWS], bucket_b[MAX_WINDOWS];
    for (Py_ssize_t e = 0; e < n_events; e++) {
        const int64_t s = slots[e], t = times[e];
        char *rec = records + s * itemsize;
        const int64_t previous = get_i64(rec + clock_at);
        const int known = previous != NO_TIME;
        const int expired = known && t > previous + evict_after;
        if (expired) { /* idle long enough to be evicted: starts afresh */
            memcpy(rec, empty, (size_t)itemsize);
            for (Py_ssize_t c = 0; c < n_cat; c++) {
                PyObject **cell = &categories[s * n_cat + c];
                Py_INCREF(Py_None);
                Py_XSETREF(*cell, Py_None);
            }
        }
        const int fresh = !known || expired;
        const int64_t clock = fresh ? t : (t > previous ? t : previous);
        set_i64(rec + clock_at, clock);
        clock_out[e] = clock;
        int64_t first = get_i64(rec + first_at);
        first = fresh ? t : (t < first ? t : first);
        set_i64(rec + first_at, first);
        first_out[e] = first;
        if (offsets) set_i64(rec + applied_at, offsets[e]);

        const int64_t then_clock = fresh ? clock : previous;
        for (Py_ssize_t w = 0; w < n_windows; w++) {
            now_b[w] = floordiv(clock, windows[w]);
            then_b[w] = floordiv(then_clock, windows[w]);
            bucket_b[w] = floordiv(t, windows[w]);
        }
        const double *v = values + e * n_columns;
        const uint8_t *accepts = type_table + (Py_ssize_t)types[e] * n_keys;
        for (Py_ssize_t b = 0; b < n_blocks; b++) {
            const int64_t *block = blocks + b * B_COLUMNS;
            const int64_t kind = block[B_KIND], windowed = block[B_WINDOWED],
                          dtype = block[B_DTYPE], keys = block[B_KEYS],
                          buckets = block[B_BUCKETS], first_key = block[B_FIRST_KEY];
            const size_t size = dtype_size(dtype);
            for (int64_t k = 0; k < keys; k++) {
                const int64_t key = first_key + k;
                char *ring = rec + block[B_OFFSET] + (size_t)(k * buckets) * size;
                int64_t position = 0;
                int counts = accepts[key] && !isnan(v[key_field[key]]);
                if (windowed) {
                    const int64_t w = key_window[key];
                    const int64_t moved = now_b[w] - then_b[w];
                    if (moved > 0) { /* clear the buckets that slide out of the window */
                        const int64_t at = floormod(then_b[w], buckets);
                        const int64_t d = moved < buckets ? moved : buckets;
                        for (int64_t i = 1; i <= d; i++)
                            set_identity(ring + (size_t)((at + i) % buckets) * size, kind, dtype);
                    }
                    counts = counts && bucket_b[w] > now_b[w] - buckets;
                    position = floormod(bucket_b[w], buckets);
                }
                if (counts) {
                    char *cell = ring + (size_t)position * size;
                    const double x = v[key_field[key]];
                    switch (kind) {
                    case KIND_COUNT:
                        if (dtype == DT_INT32) set_i32(cell, get_i32(cell) + 1);
                        else set_i64(cell, get_i64(cell) + 1);
                        break;
                    case KIND_SUM: set_f64(cell, get_f64(cell) + x); break;
                    case KIND_MIN: if (x < get_f64(cell)) set_f64(cell, x); break;
                    default: if (x > get_f64(cell)) set_f64(cell, x); break;
                    }
                }
                double total;
                if (kind == KIND_COUNT) {
                    int64_t sum = 0;
                    for (int64_t i = 0; i < buckets; i++) {
                        const char *cell = ring + (size_t)i * size;
                        sum += dtype == DT_INT32 ? get_i32(cell) : get_i64(cell);
                    }
                    total = (double)sum;
                } else {
                    total = get_cell(ring, dtype);
                    for (int64_t i = 1; i < buckets; i++) {
                        const double x = get_f64(ring + (size_t)i * size);
                        if (kind == KIND_SUM) total += x;
                        else if (kind == KIND_MIN) total = x < total ? x : total;
                        else total = x > total ? x : total;
                    }
                }
                totals_out[e * n_keys + key] = total;
            }
        }

        /* Latest values: follow the greatest event time (ties: the later arrival). */
        const uint8_t *mask = latest_mask + e * n_latest;
        for (int64_t j = 0; j < n_latest; j++) {
            char *time_cell = rec + latest_time_at + j * 8;
            const int64_t value_col = latest_cols[2 * j], category_col = latest_cols[2 * j + 1];
            if (mask[j] && t >= get_i64(time_cell)) {
                set_i64(time_cell, t);
                if (value_col >= 0)
                    set_f64(rec + latest_value_at + value_col * 8,
                            latest_values[e * n_values + value_col]);
                if (category_col >= 0) {
                    PyObject *value = batch_categories[e * n_cat + category_col];
                    Py_INCREF(value);
                    Py_XSETREF(categories[s * n_cat + category_col], value);
                }
            }
            time_out[e * n_latest + j] = get_i64(time_cell);
        }
        for (int64_t j = 0; j < n_values; j++)
            value_out[e * n_values + j] = get_f64(rec + latest_value_at + j * 8);
        for (Py_ssize_t c = 0; c < n_cat; c++) {
            PyObject *value = categories[s * n_cat + c];
            if (value == NULL) value = Py_None;
            Py_INCREF(value);
            Py_XSETREF(category_out[e * n_cat + c], value);
        }
    }
    result = Py_NewRef(Py_None);
done:
    release(bufs, A_COUNT);
    return result;
}

/* A category (str or None) as UTF-8: its length, -1 for None; -2 with TypeError else. */
static Py_ssize_t category_utf8(PyObject *value, const char **utf8) {
    *utf8 = NULL;
    if (value == NULL || value == Py_None) return -1;
    if (!PyUnicode_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "a category that is not a str");
        return -2;
    }
    Py_ssize_t n;
    *utf8 = PyUnicode_AsUTF8AndSize(value, &n);
    return *utf8 == NULL ? -2 : n;
}

/* Bytes of its msgpack form, as msgspec writes it (nil, fixstr, str8, str16, str32). */
static Py_ssize_t category_size(Py_ssize_t n) {
    return n < 0 ? 1 : n + (n < 32 ? 1 : n < 256 ? 2 : n < 65536 ? 3 : 5);
}

static char *write_category(char *out, const char *utf8, Py_ssize_t n) {
    if (n < 0) { *out++ = (char)0xc0; return out; }
    if (n < 32) *out++ = (char)(0xa0 | n);
    else if (n < 256) { *out++ = (char)0xd9; *out++ = (char)n; }
    else if (n < 65536) { *out++ = (char)0xda; *out++ = (char)(n >> 8); *out++ = (char)n; }
    else {
        *out++ = (char)0xdb;
        for (int shift = 24; shift >= 0; shift -= 8) *out++ = (char)(n >> shift);
    }
    memcpy(out, utf8, (size_t)n);
    return out + n;
}

/* Snapshots: prefix (the msgpack of the version, the layout and the record's bin header),
   the record's bytes, then the categories as a msgpack array. */
static PyObject *export_snapshots(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError,
                        "export_snapshots(records, itemsize, slots, prefix, categories_at, "
                        "n_categories)");
        return NULL;
    }
    Py_ssize_t itemsize = PyLong_AsSsize_t(args[1]);
    Py_ssize_t categories_at = PyLong_AsSsize_t(args[4]);
    Py_ssize_t n_cat = PyLong_AsSsize_t(args[5]);
    if (PyErr_Occurred()) return NULL;
    if (n_cat > 15) {
        PyErr_SetString(PyExc_ValueError, "more than 15 categorical values per customer");
        return NULL;
    }
    Buf bufs[3];
    memset(bufs, 0, sizeof bufs);
    PyObject *result = NULL;
    if (get_buf(args[0], &bufs[0], 0, 0, "records") < 0 ||
        get_buf(args[2], &bufs[1], 0, 0, "slots") < 0 ||
        get_buf(args[3], &bufs[2], 0, 0, "prefix") < 0)
        goto done;
    const char *records = bufs[0].b.buf, *prefix = bufs[2].b.buf;
    const Py_ssize_t capacity = itemsize > 0 ? bufs[0].b.len / itemsize : 0;
    const int64_t *slots = bufs[1].b.buf;
    const Py_ssize_t n = bufs[1].b.len / 8, n_prefix = bufs[2].b.len;
    PyObject *const *categories = (PyObject *const *)categories_at;
    result = PyList_New(n);
    if (result == NULL) goto done;
    const char *utf8[15];
    Py_ssize_t lengths[15];
    for (Py_ssize_t i = 0; i < n; i++) {
        const int64_t s = slots[i];
        if (s < 0 || s >= capacity) {
            PyErr_Format(PyExc_IndexError, "slot %lld out of range", (long long)s);
            Py_CLEAR(result);
            goto done;
        }
        Py_ssize_t total = n_prefix + itemsize + 1;
        for (Py_ssize_t c = 0; c < n_cat; c++) {
            lengths[c] = category_utf8(categories[s * n_cat + c], &utf8[c]);
            if (lengths[c] < -1) { Py_CLEAR(result); goto done; }
            total += category_size(lengths[c]);
        }
        PyObject *snapshot = PyBytes_FromStringAndSize(NULL, total);
        if (snapshot == NULL) { Py_CLEAR(result); goto done; }
        char *out = PyBytes_AS_STRING(snapshot);
        memcpy(out, prefix, (size_t)n_prefix);
        out += n_prefix;
        memcpy(out, records + s * itemsize, (size_t)itemsize);
        out += itemsize;
        *out++ = (char)(0x90 | n_cat);
        for (Py_ssize_t c = 0; c < n_cat; c++) out = write_category(out, utf8[c], lengths[c]);
        PyList_SET_ITEM(result, i, snapshot);
    }
done:
    release(bufs, 3);
    return result;
}

static PyMethodDef methods[] = {
    {"export_snapshots", (PyCFunction)(void (*)(void))export_snapshots, METH_FASTCALL,
     "Changelog snapshots of the given slots (see FeatureState.export)."},
    {"apply_events", (PyCFunction)(void (*)(void))apply_events, METH_FASTCALL,
     "Apply a batch's events to the records in arrival order; see FeatureState."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_state_kernel",
    "The per-event state update of driftline.core.state, in C.", -1, methods,
};

PyMODINIT_FUNC PyInit__state_kernel(void) { return PyModule_Create(&module); }
