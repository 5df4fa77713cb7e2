/* ctl._fast: the compiled twin of ctl/bencode.py, the ng protocol's codec (issue 14).
 *
 * ctl/bencode.py is the reference: each function here does what its Python twin (py_bdecode,
 * py_bencode) does, value for value and error for error (class and message), and
 * tests/test_fast_bencode.py holds the two to that on random values and random, mutated and
 * truncated bytes. ctl/bencode.py selects this module once, at import, through
 * media/native.py; without it (no compiler at install time, RTPAI_PURE_PYTHON=1) the Python
 * runs. An offer's reply waits for one decode and one encode: in C they cost a few
 * microseconds less each (docs/performance.md, round 5).
 *
 *   bdecode(data, *, fold_keys=None)   one bencoded value (_fast_bdecode.c: untrusted bytes)
 *   bencode(value) -> bytes            our replies and requests
 *   bind(error_class, mapping)         the BencodeError to raise and collections.abc.Mapping
 *
 * Where the twins may differ, on what no caller does: a value that runs Python code while it
 * is encoded (a key whose __str__ changes the dictionary, a str subclass whose __str__ returns
 * a str subclass, a Mapping whose items() yields no pairs) and the exact depth at which a
 * self-containing value raises RecursionError (both raise it).
 */
#include "_fast.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

PyObject *BencodeError;
PyObject *MappingABC;

/* --- the output: one buffer, grown as needed ----------------------------------------------- */

typedef struct {
    char *buf;
    Py_ssize_t len, capacity;
    char inline_buf[1024]; /* an offer's reply fits */
} Out;

static int out_write(Out *out, const char *s, Py_ssize_t n) {
    if (n > out->capacity - out->len) {
        Py_ssize_t capacity = out->capacity;
        while (n > capacity - out->len) {
            if (capacity > PY_SSIZE_T_MAX / 2) {
                PyErr_NoMemory();
                return -1;
            }
            capacity *= 2;
        }
        char *buf = PyMem_Malloc((size_t)capacity);
        if (buf == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        memcpy(buf, out->buf, (size_t)out->len);
        if (out->buf != out->inline_buf)
            PyMem_Free(out->buf);
        out->buf = buf;
        out->capacity = capacity;
    }
    memcpy(out->buf + out->len, s, (size_t)n);
    out->len += n;
    return 0;
}

/* ``<length>:<bytes>`` */
static int write_string(Out *out, const char *s, Py_ssize_t n) {
    char head[32];
    int h = snprintf(head, sizeof head, "%zd:", n);
    return out_write(out, head, h) < 0 ? -1 : out_write(out, s, n);
}

/* ``i<number>e`` of an exact int, of any size (a big one as str() writes it, limit included:
 * the Python's b"%d" has the same). */
static int write_int(Out *out, PyObject *number) {
    int overflow;
    long long value = PyLong_AsLongLongAndOverflow(number, &overflow);
    if (value == -1 && PyErr_Occurred())
        return -1;
    if (!overflow) {
        char text[32];
        int n = snprintf(text, sizeof text, "i%llde", value);
        return out_write(out, text, n);
    }
    PyObject *digits = PyObject_Str(number);
    if (digits == NULL)
        return -1;
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(digits, &n);
    int failed = s == NULL || out_write(out, "i", 1) < 0 || out_write(out, s, n) < 0 ||
                 out_write(out, "e", 1) < 0;
    Py_DECREF(digits);
    return failed ? -1 : 0;
}

static int write_text(Out *out, PyObject *text) {
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(text, &n); /* UnicodeEncodeError: as str.encode() */
    return s == NULL ? -1 : write_string(out, s, n);
}

static int encode_value(Out *out, PyObject *value);

static int encode_nested(Out *out, PyObject *value) {
    if (Py_EnterRecursiveCall(" while bencoding"))
        return -1;
    int result = encode_value(out, value);
    Py_LeaveRecursiveCall();
    return result;
}

/* --- dictionaries: the entries not None, sorted by key ------------------------------------ */

typedef struct {
    PyObject *key; /* str(key) */
    PyObject *value;
    Py_ssize_t index; /* the order given: the sort is stable, as Python's */
} Entry;

static int entry_order(const void *a, const void *b) {
    const Entry *x = a, *y = b;
    /* Code point order, which is UTF-8 byte order: bencode's. Cannot fail on two str. */
    int c = PyUnicode_Compare(x->key, y->key);
    return c != 0 ? c : (x->index > y->index) - (x->index < y->index);
}

static int write_dict(Out *out, PyObject *mapping) {
    Py_ssize_t capacity = PyDict_Check(mapping) ? PyDict_GET_SIZE(mapping) : 8, count = 0;
    Entry *entries = PyMem_Malloc((size_t)(capacity ? capacity : 1) * sizeof(Entry));
    PyObject *items = NULL, *iterator = NULL, *pair = NULL;
    int result = -1;
    if (entries == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    if (PyDict_CheckExact(mapping)) {
        /* No Python code runs in this loop: the keys are made text after it. */
        Py_ssize_t at = 0;
        PyObject *key, *item;
        while (PyDict_Next(mapping, &at, &key, &item) && count < capacity) {
            if (item == Py_None)
                continue;
            Py_INCREF(key);
            Py_INCREF(item);
            entries[count] = (Entry){key, item, count};
            count++;
        }
    } else { /* a Mapping: its items(), as the Python */
        items = PyObject_CallMethod(mapping, "items", NULL);
        if (items == NULL || (iterator = PyObject_GetIter(items)) == NULL)
            goto done;
        while ((pair = PyIter_Next(iterator)) != NULL) {
            if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
                PyErr_SetString(PyExc_TypeError, "items() must yield (key, value) pairs");
                goto done;
            }
            PyObject *item = PyTuple_GET_ITEM(pair, 1);
            if (item != Py_None) {
                if (count == capacity) {
                    Entry *grown = PyMem_Realloc(entries, (size_t)capacity * 2 * sizeof(Entry));
                    if (grown == NULL) {
                        PyErr_NoMemory();
                        goto done;
                    }
                    entries = grown;
                    capacity *= 2;
                }
                PyObject *key = PyTuple_GET_ITEM(pair, 0);
                Py_INCREF(key);
                Py_INCREF(item);
                entries[count] = (Entry){key, item, count};
                count++;
            }
            Py_CLEAR(pair);
        }
        if (PyErr_Occurred())
            goto done;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        if (!PyUnicode_CheckExact(entries[i].key)) {
            PyObject *text = PyObject_Str(entries[i].key);
            if (text == NULL)
                goto done;
            Py_SETREF(entries[i].key, text);
        }
    }
    qsort(entries, (size_t)count, sizeof(Entry), entry_order);
    if (out_write(out, "d", 1) < 0)
        goto done;
    for (Py_ssize_t i = 0; i < count; i++)
        if (write_text(out, entries[i].key) < 0 || encode_nested(out, entries[i].value) < 0)
            goto done;
    result = out_write(out, "e", 1);
done:
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_DECREF(entries[i].key);
        Py_DECREF(entries[i].value);
    }
    PyMem_Free(entries);
    Py_XDECREF(pair);
    Py_XDECREF(iterator);
    Py_XDECREF(items);
    return result;
}

/* A list or tuple; the items that are None left out. */
static int write_list(Out *out, PyObject *sequence) {
    if (out_write(out, "l", 1) < 0)
        return -1;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(sequence); i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(sequence, i);
        if (item == Py_None)
            continue;
        Py_INCREF(item);
        int failed = encode_nested(out, item);
        Py_DECREF(item);
        if (failed)
            return -1;
    }
    return out_write(out, "e", 1);
}

/* The Python's order of checks: exact str, int, dict first (the ng values), then what is
 * surely no Mapping (list, tuple, bool, float, bytes), then the rest as the Python tries it. */
static int encode_value(Out *out, PyObject *value) {
    PyTypeObject *type = Py_TYPE(value);
    if (type == &PyUnicode_Type)
        return write_text(out, value);
    if (type == &PyLong_Type)
        return write_int(out, value);
    if (type == &PyDict_Type)
        return write_dict(out, value);
    if (type == &PyList_Type || type == &PyTuple_Type)
        return write_list(out, value);
    if (type == &PyBool_Type)
        return out_write(out, value == Py_True ? "i1e" : "i0e", 3);
    if (type == &PyFloat_Type) { /* round(value): half to even, ValueError on nan, ... */
        PyObject *rounded = PyObject_CallMethod(value, "__round__", NULL);
        if (rounded == NULL)
            return -1;
        int result = write_int(out, rounded);
        Py_DECREF(rounded);
        return result;
    }
    if (type == &PyBytes_Type)
        return write_string(out, PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value));
    int is_mapping = MappingABC != NULL ? PyObject_IsInstance(value, MappingABC)
                                        : PyDict_Check(value);
    if (is_mapping < 0)
        return -1;
    if (is_mapping)
        return write_dict(out, value);
    if (PyBytes_Check(value))
        return write_string(out, PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value));
    if (PyByteArray_Check(value))
        return write_string(out, PyByteArray_AS_STRING(value), PyByteArray_GET_SIZE(value));
    if (PyLong_Check(value)) { /* an int subclass (IntEnum): its number */
        PyObject *number = PyNumber_Long(value);
        if (number == NULL)
            return -1;
        int result = write_int(out, number);
        Py_DECREF(number);
        return result;
    }
    if (PyUnicode_Check(value)) { /* a str subclass (StrEnum): str() of it */
        PyObject *text = PyObject_Str(value);
        if (text == NULL)
            return -1;
        int result = encode_nested(out, text);
        Py_DECREF(text);
        return result;
    }
    PyObject *name = PyObject_GetAttrString((PyObject *)type, "__name__");
    if (name != NULL) {
        PyErr_Format(PyExc_TypeError, "cannot bencode %U", name);
        Py_DECREF(name);
    }
    return -1;
}

PyObject *bencode(PyObject *module, PyObject *value) {
    (void)module;
    Out out = {.len = 0, .capacity = sizeof out.inline_buf};
    out.buf = out.inline_buf;
    PyObject *result = NULL;
    if (encode_value(&out, value) == 0)
        result = PyBytes_FromStringAndSize(out.buf, out.len);
    if (out.buf != out.inline_buf)
        PyMem_Free(out.buf);
    return result;
}

/* --- the module ------------------------------------------------------------------------- */

static PyObject *bind(PyObject *module, PyObject *args) {
    (void)module;
    PyObject *error_class, *mapping;
    if (!PyArg_ParseTuple(args, "OO:bind", &error_class, &mapping))
        return NULL;
    if (!PyType_Check(error_class) ||
        !PyType_IsSubtype((PyTypeObject *)error_class, (PyTypeObject *)PyExc_ValueError)) {
        PyErr_SetString(PyExc_TypeError, "bind() takes a ValueError subclass");
        return NULL;
    }
    Py_INCREF(error_class);
    Py_XSETREF(BencodeError, error_class);
    Py_INCREF(mapping);
    Py_XSETREF(MappingABC, mapping);
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"bdecode", (PyCFunction)(void (*)(void))bdecode, METH_FASTCALL | METH_KEYWORDS,
     "One bencoded value; dictionary keys passed through fold_keys if given."},
    {"bencode", bencode, METH_O, "Bencode a value as ctl.bencode.py_bencode does."},
    {"bind", bind, METH_VARARGS, "The exception class to raise and the Mapping ABC."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "ctl._fast", "ctl/bencode.py's codec, compiled.", -1,
    module_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fast(void) {
    if (BencodeError == NULL) {
        BencodeError = PyExc_ValueError;
        Py_INCREF(BencodeError);
    }
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL)
        return NULL;
    /* The bounds this build enforces, for the tests to hold to ctl/bencode.py's. */
    if (PyModule_AddIntConstant(module, "MAX_DEPTH", BENCODE_MAX_DEPTH) < 0 ||
        PyModule_AddIntConstant(module, "MAX_DIGITS", BENCODE_MAX_DIGITS) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
