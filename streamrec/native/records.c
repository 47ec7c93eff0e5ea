/* Kafka record batches (message format v2) read into kafka-python's ConsumerRecord tuples.
 *
 * ingest.kafka_records.read_batch's common case: records without headers,
 * well formed. kafka_records() returns (records, bytes) with every record of
 * the batch, or None (no exception set) when anything is unusual: a header,
 * a varint or a length that does not fit, bytes left over. The Python
 * reader then reads the batch, or raises the error the user sees; this file
 * never decides what is an error.
 *
 * The extension module streamrec.native._records (built by setup.py). `data`
 * is bytes (the batch's records, decompressed) and `record_type` a tuple
 * subclass of 13 fields (ConsumerRecord). A batch of timestamp type 1 (log append time)
 * stamps every record with `log_append_time` (the batch's max timestamp).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

/* A zigzag varint at buf[*pos], as kafka.record.util.decode_varint reads it. */
static int varint(const unsigned char *buf, Py_ssize_t end, Py_ssize_t *pos, int64_t *out) {
    uint64_t v = 0;
    int shift = 0;
    while (*pos < end) {
        unsigned char b = buf[(*pos)++];
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = (int64_t)(v >> 1) ^ -(int64_t)(v & 1);
            return 1;
        }
        shift += 7;
        if (shift > 63)
            return 0;
    }
    return 0;
}

/* buf[*pos:*pos + len] as bytes (None for a length of -1), or NULL: unusual (*bad) or an error. */
static PyObject *field(const unsigned char *buf, Py_ssize_t end, Py_ssize_t *pos, int64_t len,
                       int *bad) {
    if (len == -1)
        Py_RETURN_NONE;
    if (len < 0 || len > end - *pos) {
        *bad = 1;
        return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize((const char *)buf + *pos, (Py_ssize_t)len);
    *pos += (Py_ssize_t)len;
    return out;
}

static PyObject *kafka_records(PyObject *data, int64_t start, int64_t count, int64_t base_offset,
                        int64_t first_timestamp, int64_t log_append_time, int64_t timestamp_type,
                        PyObject *record_type, PyObject *topic, PyObject *partition,
                        PyObject *leader_epoch) {
    const unsigned char *buf = (const unsigned char *)PyBytes_AS_STRING(data);
    Py_ssize_t end = PyBytes_GET_SIZE(data), pos = (Py_ssize_t)start;
    PyTypeObject *type = (PyTypeObject *)record_type;
    PyObject *records, *ts_type = NULL, *minus_one = NULL;
    int64_t size = 0;
    int bad = 0;
    if (count < 0 || count > end - pos)  /* (a record takes 7 bytes at least) */
        Py_RETURN_NONE;
    records = PyList_New((Py_ssize_t)count);
    if (records == NULL)
        return NULL;
    ts_type = PyLong_FromLongLong(timestamp_type);
    minus_one = PyLong_FromLong(-1);
    if (ts_type == NULL || minus_one == NULL)
        goto error;
    for (int64_t i = 0; i < count; i++) {
        int64_t length, attributes, ts_delta, offset_delta, key_len, value_len, headers;
        if (!varint(buf, end, &pos, &length))
            goto unusual;
        Py_ssize_t record_start = pos;
        if (!varint(buf, end, &pos, &attributes) || !varint(buf, end, &pos, &ts_delta)
            || !varint(buf, end, &pos, &offset_delta) || !varint(buf, end, &pos, &key_len))
            goto unusual;
        PyObject *key = field(buf, end, &pos, key_len, &bad);
        if (key == NULL)
            goto fail;
        if (!varint(buf, end, &pos, &value_len)) {
            Py_DECREF(key);
            goto unusual;
        }
        PyObject *value = field(buf, end, &pos, value_len, &bad);
        if (value == NULL) {
            Py_DECREF(key);
            goto fail;
        }
        if (!varint(buf, end, &pos, &headers) || headers != 0 || pos - record_start != length) {
            Py_DECREF(key);
            Py_DECREF(value);
            goto unusual;
        }
        size += length;
        PyObject *record = type->tp_alloc(type, 13);
        PyObject *offset = PyLong_FromLongLong(base_offset + offset_delta);
        PyObject *timestamp = PyLong_FromLongLong(
            timestamp_type == 1 ? log_append_time : first_timestamp + ts_delta);
        PyObject *header_list = PyList_New(0);
        PyObject *key_size = key == Py_None ? Py_NewRef(minus_one)
                                            : PyLong_FromSsize_t(PyBytes_GET_SIZE(key));
        PyObject *value_size = value == Py_None ? Py_NewRef(minus_one)
                                                : PyLong_FromSsize_t(PyBytes_GET_SIZE(value));
        if (record == NULL || offset == NULL || timestamp == NULL || header_list == NULL
            || key_size == NULL || value_size == NULL) {
            Py_XDECREF(record);
            Py_XDECREF(offset);
            Py_XDECREF(timestamp);
            Py_XDECREF(header_list);
            Py_XDECREF(key_size);
            Py_XDECREF(value_size);
            Py_DECREF(key);
            Py_DECREF(value);
            goto error;
        }
        PyTuple_SET_ITEM(record, 0, Py_NewRef(topic));
        PyTuple_SET_ITEM(record, 1, Py_NewRef(partition));
        PyTuple_SET_ITEM(record, 2, Py_NewRef(leader_epoch));
        PyTuple_SET_ITEM(record, 3, offset);
        PyTuple_SET_ITEM(record, 4, timestamp);
        PyTuple_SET_ITEM(record, 5, Py_NewRef(ts_type));
        PyTuple_SET_ITEM(record, 6, key);
        PyTuple_SET_ITEM(record, 7, value);
        PyTuple_SET_ITEM(record, 8, header_list);
        PyTuple_SET_ITEM(record, 9, Py_NewRef(Py_None));
        PyTuple_SET_ITEM(record, 10, key_size);
        PyTuple_SET_ITEM(record, 11, value_size);
        PyTuple_SET_ITEM(record, 12, Py_NewRef(minus_one));
        PyList_SET_ITEM(records, (Py_ssize_t)i, record);
    }
    if (pos != end)
        goto unusual;
    Py_DECREF(ts_type);
    Py_DECREF(minus_one);
    return Py_BuildValue("(NL)", records, (long long)size);

fail:
    if (!bad)
        goto error;
unusual:
    Py_DECREF(records);
    Py_DECREF(ts_type);
    Py_DECREF(minus_one);
    Py_RETURN_NONE;
error:
    Py_DECREF(records);
    Py_XDECREF(ts_type);
    Py_XDECREF(minus_one);
    return NULL;
}

/* kafka_records(data: bytes, start, count, base_offset, first_timestamp, log_append_time,
 *               timestamp_type, record_type, topic, partition, leader_epoch) */
static PyObject *py_kafka_records(PyObject *self, PyObject *args) {
    PyObject *data, *record_type, *topic, *partition, *leader_epoch;
    long long start, count, base_offset, first_timestamp, log_append_time, timestamp_type;
    if (!PyArg_ParseTuple(args, "O!LLLLLLO!OOO:kafka_records", &PyBytes_Type, &data, &start,
                          &count, &base_offset, &first_timestamp, &log_append_time,
                          &timestamp_type, &PyType_Type, &record_type, &topic, &partition,
                          &leader_epoch))
        return NULL;
    if (start < 0 || start > PyBytes_GET_SIZE(data)) {
        PyErr_Format(PyExc_ValueError, "kafka_records: start %lld outside the %zd bytes of data",
                     start, PyBytes_GET_SIZE(data));
        return NULL;
    }
    if (!PyType_IsSubtype((PyTypeObject *)record_type, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "kafka_records: record_type must be a tuple subclass");
        return NULL;
    }
    return kafka_records(data, start, count, base_offset, first_timestamp, log_append_time,
                         timestamp_type, record_type, topic, partition, leader_epoch);
}

static PyMethodDef methods[] = {
    {"kafka_records", py_kafka_records, METH_VARARGS,
     "A v2 batch's records and their bytes, or None where the Python reader must read it."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_records",
                                    "Kafka record batches read into records.", -1, methods};

PyMODINIT_FUNC PyInit__records(void) { return PyModule_Create(&module); }
