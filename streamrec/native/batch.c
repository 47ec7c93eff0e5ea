/* ingest.batch.Batcher's common case in one pass over the events.
 *
 * Every event a named tuple (ingest.event.Event), every sparse feature one
 * value per example, every value of a type the batcher converts without
 * asking anyone but its id memo. The batcher builds column by column in
 * Python, one pass over all events per feature: with tens of thousands of
 * events per batch, each pass walks objects spread over the heap, and the
 * walks cost more than the conversions. Here each event is visited once.
 *
 * batch_columns() returns 1 with every buffer filled, or 0 (no exception set)
 * when the batch needs the general Python path: a jagged or missing sparse
 * feature, an id that does not fit in int64, a type it does not know. The
 * Python path then builds the batch, or raises the error the user sees; this
 * file never decides what is an error. The conversions are the Python
 * path's: ints as they are, other categorical values through the memo
 * (its __missing__ is ingest.ids.to_id), dense values as signed log1p with
 * non-finite values and strings read as 0.
 *
 * The extension module streamrec.native._batch (built by setup.py), called by
 * streamrec.native.batch_columns. `events` must be a list nobody else holds
 * (the caller passes a private copy): Python code the memo runs could otherwise
 * shrink it under the loop.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>

static int as_int64(PyObject *value, int64_t *out) {
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (overflow || (v == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 0;
    }
    *out = (int64_t)v;
    return 1;
}

/* A categorical value's raw id: exact ints as they are, anything else via the memo. */
static int categorical(PyObject *value, PyObject *memo, int64_t *out) {
    if (PyLong_CheckExact(value)) return as_int64(value, out);
    PyObject *id = PyObject_GetItem(memo, value); /* new reference; may run to_id */
    if (id == NULL) {
        PyErr_Clear();
        return 0;
    }
    int ok = PyLong_CheckExact(id) && as_int64(id, out);
    Py_DECREF(id);
    return ok;
}

/* A number's double (ints, bools and floats); 0 if it is none or out of range. */
static int as_double(PyObject *value, double *out) {
    if (PyFloat_CheckExact(value)) {
        *out = PyFloat_AS_DOUBLE(value);
        return 1;
    }
    if (PyLong_Check(value)) {
        double d = PyLong_AsDouble(value);
        if (d == -1.0 && PyErr_Occurred()) {
            PyErr_Clear();
            return 0;
        }
        *out = d;
        return 1;
    }
    return 0;
}

static int dense_value(PyObject *features, PyObject *name, float *out) {
    PyObject *values = PyDict_GetItemWithError(features, name); /* borrowed */
    if (values == NULL) {
        if (PyErr_Occurred()) {
            PyErr_Clear();
            return 0;
        }
        *out = 0.f; /* absent */
        return 1;
    }
    if (!PyTuple_CheckExact(values)) return 0;
    if (PyTuple_GET_SIZE(values) == 0) {
        *out = 0.f;
        return 1;
    }
    PyObject *first = PyTuple_GET_ITEM(values, 0);
    if (PyUnicode_CheckExact(first)) {
        *out = 0.f;
        return 1;
    }
    double x;
    if (!as_double(first, &x)) return 0;
    *out = isfinite(x) ? (float)copysign(log1p(fabs(x)), x) : 0.f;
    return 1;
}

/* sparse: a tuple whose items are 0 (the event's user_id), 1 (its item_id) or a
 * feature name; dense: a tuple of feature names; fields: the Event's indexes of
 * user_id, item_id, features, label, sample_rate and timestamp_ms.
 * values: [len(sparse) * n] feature-major; dense_out: [n, len(dense)]. */
static int batch_columns(PyObject *events, PyObject *sparse, PyObject *dense, PyObject *memo,
                  int64_t user_at, int64_t item_at, int64_t features_at, int64_t label_at,
                  int64_t rate_at, int64_t stamp_at, int64_t *values, float *dense_out,
                  float *labels, float *rates, int64_t *stamps) {
    if (!PyList_CheckExact(events) || !PyTuple_CheckExact(sparse) || !PyTuple_CheckExact(dense))
        return 0;
    const Py_ssize_t n = PyList_GET_SIZE(events);
    const Py_ssize_t n_sparse = PyTuple_GET_SIZE(sparse), n_dense = PyTuple_GET_SIZE(dense);
    Py_ssize_t width = user_at;
    const int64_t at[] = {item_at, features_at, label_at, rate_at, stamp_at};
    for (int k = 0; k < 5; ++k)
        if (at[k] > width) width = at[k];
    for (Py_ssize_t i = 0; i < n; ++i) {
        PyObject *event = PyList_GET_ITEM(events, i);
        if (!PyTuple_Check(event) || PyTuple_GET_SIZE(event) <= width) return 0;
        PyObject *features = PyTuple_GET_ITEM(event, features_at);
        int have_dict = PyDict_Check(features);
        for (Py_ssize_t f = 0; f < n_sparse; ++f) {
            PyObject *which = PyTuple_GET_ITEM(sparse, f);
            int64_t *slot = values + f * n + i;
            if (PyLong_CheckExact(which)) {
                PyObject *id = PyTuple_GET_ITEM(event, PyLong_AsLong(which) == 0 ? user_at
                                                                                 : item_at);
                if (!PyLong_CheckExact(id) || !as_int64(id, slot)) return 0;
                continue;
            }
            if (!have_dict) return 0;
            PyObject *ids = PyDict_GetItemWithError(features, which);
            if (ids == NULL || !PyTuple_CheckExact(ids) || PyTuple_GET_SIZE(ids) != 1) {
                PyErr_Clear();
                return 0; /* absent or jagged: the general path */
            }
            /* The memo may run Python code (to_id, a value's __hash__) that
             * changes the features dict: hold the tuple while its value is used. */
            Py_INCREF(ids);
            int ok = categorical(PyTuple_GET_ITEM(ids, 0), memo, slot);
            Py_DECREF(ids);
            if (!ok) return 0;
        }
        if (n_dense && !have_dict) return 0;
        for (Py_ssize_t d = 0; d < n_dense; ++d)
            if (!dense_value(features, PyTuple_GET_ITEM(dense, d), dense_out + i * n_dense + d))
                return 0;
        PyObject *label = PyTuple_GET_ITEM(event, label_at);
        double x;
        if (label == Py_None) {
            labels[i] = 0.f;
        } else if (as_double(label, &x)) {
            labels[i] = (float)x;
        } else {
            return 0;
        }
        if (!as_double(PyTuple_GET_ITEM(event, rate_at), &x)) return 0;
        rates[i] = (float)x;
        PyObject *stamp = PyTuple_GET_ITEM(event, stamp_at);
        if (!PyLong_CheckExact(stamp) || !as_int64(stamp, stamps + i)) return 0;
    }
    return 1;
}

/* A writable contiguous buffer of exactly `count` items of `itemsize` bytes. */
static int output(Py_buffer *view, const char *name, Py_ssize_t count, Py_ssize_t itemsize) {
    if (view->len != count * itemsize) {
        PyErr_Format(PyExc_ValueError,
                     "batch_columns: %s must hold %zd items of %zd bytes, got %zd bytes",
                     name, count, itemsize, view->len);
        return 0;
    }
    return 1;
}

/* batch_columns(events: list, sparse: tuple, dense: tuple, memo, fields: 6 ints,
 *               values, dense_out, labels, rates, stamps: writable buffers) -> bool */
static PyObject *py_batch_columns(PyObject *self, PyObject *args) {
    PyObject *events, *sparse, *dense, *memo, *result = NULL;
    long long at[6];
    Py_buffer out[5] = {{0}};
    if (!PyArg_ParseTuple(args, "O!O!O!O(LLLLLL)w*w*w*w*w*:batch_columns", &PyList_Type, &events,
                          &PyTuple_Type, &sparse, &PyTuple_Type, &dense, &memo, &at[0], &at[1],
                          &at[2], &at[3], &at[4], &at[5], &out[0], &out[1], &out[2], &out[3],
                          &out[4]))
        return NULL;
    const Py_ssize_t n = PyList_GET_SIZE(events);
    for (int k = 0; k < 6; ++k) {
        if (at[k] < 0) {
            PyErr_SetString(PyExc_ValueError, "batch_columns: field indexes must be >= 0");
            goto done;
        }
    }
    if (!output(&out[0], "values", PyTuple_GET_SIZE(sparse) * n, 8)
        || !output(&out[1], "dense_out", PyTuple_GET_SIZE(dense) * n, 4)
        || !output(&out[2], "labels", n, 4) || !output(&out[3], "rates", n, 4)
        || !output(&out[4], "stamps", n, 8))
        goto done;
    int ok = batch_columns(events, sparse, dense, memo, at[0], at[1], at[2], at[3], at[4], at[5],
                           out[0].buf, out[1].buf, out[2].buf, out[3].buf, out[4].buf);
    result = PyBool_FromLong(ok);
done:
    for (int k = 0; k < 5; ++k) PyBuffer_Release(&out[k]);
    return result;
}

static PyMethodDef methods[] = {
    {"batch_columns", py_batch_columns, METH_VARARGS,
     "Fill the batch's columns in one pass over the events; False: the general path's batch."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_batch",
                                    "The batcher's one-pass column build.", -1, methods};

PyMODINIT_FUNC PyInit__batch(void) { return PyModule_Create(&module); }
