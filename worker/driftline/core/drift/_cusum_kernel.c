/* The CUSUM recursion with restarts, in C (driftline.core.drift.cusum._scan).
 *
 * Why: the numpy scan uses the Lindley closed form over the whole batch, then re-scans the
 * rest of the batch once per alarm.  That is cheap while alarms are rare, but a feature
 * that stays drifted alarms (and restarts) every few dozen events, and the re-scans then
 * cost O(alarms x batch): ~30 microseconds per event on the default spec, three times the
 * model.  This is the textbook per-event recursion, O(batch x streams) whatever happens.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    Py_buffer b;
    int held;
} Buf;

static int get_buf(PyObject *obj, Buf *out, int writable) {
    if (PyObject_GetBuffer(obj, &out->b, (writable ? PyBUF_WRITABLE : 0) | PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    out->held = 1;
    return 0;
}

/* scan(increments, states, h, restart, peak, first, n_alarms, direction)
 *
 * increments: (sides, n, K) float64; states: (sides, K) float64, updated in place;
 * h: (K,); restart: bool; outputs (K,): peak float64, first int64, n_alarms int64,
 * direction int8.  Side 0 is the upper side (direction +1).
 */
static PyObject *scan(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError,
                        "scan(increments, states, h, sides, restart, peak, first, n_alarms, "
                        "direction) takes 9 arguments");
        return NULL;
    }
    const Py_ssize_t sides = PyLong_AsSsize_t(args[3]);
    const int restart = PyObject_IsTrue(args[4]);
    if ((sides == -1 && PyErr_Occurred()) || restart < 0) return NULL;
    enum { INC, STATES, H, PEAK, FIRST, N_ALARMS, DIRECTION, N_BUFS };
    PyObject *objects[N_BUFS] = {args[0], args[1], args[2], args[5], args[6], args[7], args[8]};
    const int writable[N_BUFS] = {0, 1, 0, 1, 1, 1, 1};
    Buf bufs[N_BUFS];
    memset(bufs, 0, sizeof bufs);
    PyObject *result = NULL;
    for (int i = 0; i < N_BUFS; i++)
        if (get_buf(objects[i], &bufs[i], writable[i]) < 0) goto done;

    const Py_ssize_t k = bufs[H].b.len / 8;
    if (sides < 1 || sides > 2 || k == 0 || bufs[STATES].b.len != sides * k * 8 ||
        bufs[INC].b.len % (sides * k * 8) != 0 || bufs[PEAK].b.len != k * 8 ||
        bufs[FIRST].b.len != k * 8 || bufs[N_ALARMS].b.len != k * 8 ||
        bufs[DIRECTION].b.len != k) {
        PyErr_SetString(PyExc_ValueError, "scan: arrays of inconsistent sizes");
        goto done;
    }
    const Py_ssize_t n = bufs[INC].b.len / (sides * k * 8);
    const double *x = bufs[INC].b.buf, *h = bufs[H].b.buf;
    double *states = bufs[STATES].b.buf, *peak = bufs[PEAK].b.buf;
    int64_t *first = bufs[FIRST].b.buf, *n_alarms = bufs[N_ALARMS].b.buf;
    int8_t *direction = bufs[DIRECTION].b.buf;

    for (Py_ssize_t j = 0; j < k; j++) {
        double s[2] = {states[j], sides > 1 ? states[k + j] : 0.0};
        double top = n ? -INFINITY : (sides > 1 && s[1] > s[0] ? s[1] : s[0]);
        int64_t at = -1, alarms = 0;
        int8_t dir = 0;
        for (Py_ssize_t t = 0; t < n; t++) {
            double high = 0.0;
            for (Py_ssize_t side = 0; side < sides; side++) {
                const double v = s[side] + x[(side * n + t) * k + j];
                s[side] = v > 0.0 ? v : 0.0;
                if (s[side] > high) high = s[side];
            }
            if (high > top) top = high;
            if (high > h[j]) {
                if (at < 0) {
                    at = t;
                    dir = s[0] > h[j] ? 1 : -1;
                }
                if (restart || alarms == 0) alarms++;
                if (restart) s[0] = s[1] = 0.0;
            }
        }
        states[j] = s[0];
        if (sides > 1) states[k + j] = s[1];
        peak[j] = top;
        first[j] = at;
        n_alarms[j] = alarms;
        direction[j] = dir;
    }
    result = Py_NewRef(Py_None);
done:
    for (int i = 0; i < N_BUFS; i++)
        if (bufs[i].held) PyBuffer_Release(&bufs[i].b);
    return result;
}

static PyMethodDef methods[] = {
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL,
     "One or two one-sided CUSUMs per stream over a batch, restarting at alarms."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_cusum_kernel",
    "The CUSUM recursion with restarts, in C (see driftline.core.drift.cusum).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__cusum_kernel(void) { return PyModule_Create(&module); }
