/* ctl._fast, part 1: bdecode, the twin of ctl/bencode.py's (see _fast_bencode.c).
 *
 * It reads what any peer of the ng port sends, so: only inside the buffer it was given, every
 * length checked against what is left before it is used (in Py_ssize_t or uint64_t, from at
 * most 19 digits: nothing here can overflow), the nesting bounded (BENCODE_MAX_DEPTH) as the
 * Python's is. Each check is made in the order the Python makes it, with the Python's message,
 * so that both raise the same BencodeError for the same bytes; the Python's IndexError and
 * ValueError (str.index's) messages included, as ctl.bencode.bdecode turns those into
 * BencodeError too. Fuzzed against ctl/bencode.py (tests/test_fast_bencode.py) and under ASan
 * and UBSan (make asan).
 */
#include "_fast.h"

#include <string.h>

#define RAN_OFF_THE_END "index out of range" /* Python's data[pos] past the end */
#define NOT_FOUND "subsection not found"     /* Python's data.index(b":" or b"e", pos) */

typedef struct {
    const unsigned char *data;
    Py_ssize_t len;
    PyObject *fold; /* NULL: the keys are kept as they are */
} Reader;

static void *fail(const char *message) {
    PyErr_SetString(BencodeError, message);
    return NULL;
}

static int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

/* ``<length>:<bytes>`` at pos, where data[pos] is a digit: where the bytes start and end. */
static int read_string(const Reader *r, Py_ssize_t pos, Py_ssize_t *start, Py_ssize_t *end) {
    const unsigned char *colon = memchr(r->data + pos, ':', (size_t)(r->len - pos));
    if (colon == NULL) {
        fail(NOT_FOUND);
        return -1;
    }
    Py_ssize_t digits = colon - (r->data + pos);
    for (Py_ssize_t i = 0; i < digits; i++) {
        if (!is_digit(r->data[pos + i])) {
            fail("bad string length");
            return -1;
        }
    }
    if (r->data[pos] == '0' && digits > 1) { /* no leading zeros */
        fail("bad string length");
        return -1;
    }
    Py_ssize_t first = pos + digits + 1;
    if (digits > BENCODE_MAX_DIGITS) { /* longer than any buffer (the Python says the same) */
        fail("string runs past the end");
        return -1;
    }
    uint64_t length = 0;
    for (Py_ssize_t i = 0; i < digits; i++)
        length = length * 10 + (uint64_t)(r->data[pos + i] - '0');
    if (length > (uint64_t)(r->len - first)) {
        fail("string runs past the end");
        return -1;
    }
    *start = first;
    *end = first + (Py_ssize_t)length;
    return 0;
}

/* A string value as text: UTF-8, or else latin-1 (which keeps every byte). */
static PyObject *bytes_text(const unsigned char *s, Py_ssize_t n) {
    PyObject *text = PyUnicode_DecodeUTF8((const char *)s, n, NULL);
    if (text == NULL && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
        PyErr_Clear();
        text = PyUnicode_DecodeLatin1((const char *)s, n, NULL);
    }
    return text;
}

static PyObject *decode_value(const Reader *r, Py_ssize_t *pos, int depth);

static PyObject *decode_integer(const Reader *r, Py_ssize_t *pos) {
    Py_ssize_t p = *pos;
    const unsigned char *e = memchr(r->data + p, 'e', (size_t)(r->len - p));
    if (e == NULL)
        return fail(NOT_FOUND);
    const unsigned char *digits = r->data + p + 1;
    Py_ssize_t n = e - digits;
    int negative = n > 0 && digits[0] == '-';
    const unsigned char *magnitude = digits + negative;
    Py_ssize_t m = n - negative;
    if (m == 0) /* i-e, ie */
        return fail("bad integer");
    for (Py_ssize_t i = 0; i < m; i++)
        if (!is_digit(magnitude[i]))
            return fail("bad integer");
    if (magnitude[0] == '0' && n > 1) /* i03e, i-0e */
        return fail("bad integer");
    if (m > BENCODE_MAX_DIGITS)
        return fail("integer out of range");
    uint64_t value = 0; /* 19 digits fit: < 10**19 < 2**64 */
    for (Py_ssize_t i = 0; i < m; i++)
        value = value * 10 + (uint64_t)(magnitude[i] - '0');
    if (value > (negative ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX))
        return fail("integer out of range");
    *pos = (e - r->data) + 1;
    if (negative)
        return PyLong_FromLongLong(value == (uint64_t)INT64_MAX + 1 ? INT64_MIN
                                                                    : -(long long)value);
    return PyLong_FromUnsignedLongLong(value);
}

static PyObject *decode_list(const Reader *r, Py_ssize_t *pos, int depth) {
    if (depth >= BENCODE_MAX_DEPTH)
        return fail("nested too deep");
    Py_ssize_t p = *pos + 1;
    PyObject *list = PyList_New(0);
    if (list == NULL)
        return NULL;
    for (;;) {
        if (p >= r->len) {
            Py_DECREF(list);
            return fail(RAN_OFF_THE_END);
        }
        if (r->data[p] == 'e')
            break;
        PyObject *value = decode_value(r, &p, depth + 1);
        if (value == NULL || PyList_Append(list, value) < 0) {
            Py_XDECREF(value);
            Py_DECREF(list);
            return NULL;
        }
        Py_DECREF(value);
    }
    *pos = p + 1;
    return list;
}

/* A dictionary's (key, value) pairs as read, before the keys are folded. */
typedef struct {
    PyObject **items; /* key, value, key, value... (owned references) */
    Py_ssize_t count, capacity;
    PyObject *inline_items[32];
} Pairs;

static int pairs_push(Pairs *pairs, PyObject *key, PyObject *value) {
    if (pairs->count * 2 == pairs->capacity) {
        Py_ssize_t capacity = pairs->capacity * 2;
        PyObject **items = PyMem_Malloc((size_t)capacity * sizeof(PyObject *));
        if (items == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        memcpy(items, pairs->items, (size_t)pairs->capacity * sizeof(PyObject *));
        if (pairs->items != pairs->inline_items)
            PyMem_Free(pairs->items);
        pairs->items = items;
        pairs->capacity = capacity;
    }
    pairs->items[2 * pairs->count] = key;
    pairs->items[2 * pairs->count + 1] = value;
    pairs->count++;
    return 0;
}

static void pairs_free(Pairs *pairs) {
    for (Py_ssize_t i = 0; i < 2 * pairs->count; i++)
        Py_DECREF(pairs->items[i]);
    if (pairs->items != pairs->inline_items)
        PyMem_Free(pairs->items);
}

/* {fold(key): value ...} in the order given; folding may run Python code. */
static int fill(PyObject *dict, PyObject *fold, PyObject *const *items, Py_ssize_t count) {
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *key = items[2 * i];
        if (fold != NULL && (key = PyObject_CallOneArg(fold, key)) == NULL)
            return -1;
        int failed = PyDict_SetItem(dict, key, items[2 * i + 1]);
        if (fold != NULL)
            Py_DECREF(key);
        if (failed)
            return -1;
    }
    return 0;
}

/* Two keys fold to the same name: as rtpengine (and the Python), the one sorting last wins,
 * and the dictionary is in key order. The keys are sorted by Python's own stable sort: this is
 * the rare path, and the order must be the Python's to the last tie. */
static PyObject *refill_sorted(PyObject *fold, const Pairs *pairs) {
    PyObject *list = PyList_New(pairs->count), *dict = NULL, *sort = NULL, *getter = NULL;
    PyObject *kwargs = NULL, *empty = NULL, *sorted = NULL;
    if (list == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < pairs->count; i++) {
        PyObject *pair = PyTuple_Pack(2, pairs->items[2 * i], pairs->items[2 * i + 1]);
        if (pair == NULL)
            goto done;
        PyList_SET_ITEM(list, i, pair);
    }
    PyObject *operator_module = PyImport_ImportModule("operator");
    if (operator_module == NULL)
        goto done;
    getter = PyObject_CallMethod(operator_module, "itemgetter", "i", 0);
    Py_DECREF(operator_module);
    if (getter == NULL || (sort = PyObject_GetAttrString(list, "sort")) == NULL ||
        (kwargs = Py_BuildValue("{sO}", "key", getter)) == NULL ||
        (empty = PyTuple_New(0)) == NULL || (sorted = PyObject_Call(sort, empty, kwargs)) == NULL)
        goto done;
    if ((dict = PyDict_New()) == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < pairs->count; i++) {
        PyObject *pair = PyList_GET_ITEM(list, i);
        if (fill(dict, fold, &PyTuple_GET_ITEM(pair, 0), 1) < 0) {
            Py_CLEAR(dict);
            goto done;
        }
    }
done:
    Py_XDECREF(sorted);
    Py_XDECREF(empty);
    Py_XDECREF(kwargs);
    Py_XDECREF(sort);
    Py_XDECREF(getter);
    Py_DECREF(list);
    return dict;
}

static PyObject *decode_dict(const Reader *r, Py_ssize_t *pos, int depth) {
    if (depth >= BENCODE_MAX_DEPTH)
        return fail("nested too deep");
    Py_ssize_t p = *pos + 1, start, end;
    Pairs pairs = {.count = 0, .capacity = 32};
    pairs.items = pairs.inline_items;
    PyObject *result = NULL;
    for (;;) {
        if (p >= r->len) {
            fail(RAN_OFF_THE_END);
            goto done;
        }
        unsigned char lead = r->data[p];
        if (lead == 'e')
            break;
        if (!is_digit(lead)) {
            fail("dictionary key is not a string");
            goto done;
        }
        if (read_string(r, p, &start, &end) < 0)
            goto done;
        /* Keys must be UTF-8 (rtpengine's are ASCII); a value may be any bytes. */
        PyObject *key = PyUnicode_DecodeUTF8((const char *)r->data + start, end - start, NULL);
        if (key == NULL)
            goto done;
        p = end;
        PyObject *value;
        if (p >= r->len) {
            value = fail(RAN_OFF_THE_END);
        } else if (is_digit(r->data[p])) { /* most ng values are strings */
            value = NULL;
            if (read_string(r, p, &start, &end) == 0) {
                value = bytes_text(r->data + start, end - start);
                p = end;
            }
        } else {
            value = decode_value(r, &p, depth + 1);
        }
        if (value == NULL || pairs_push(&pairs, key, value) < 0) {
            Py_DECREF(key);
            Py_XDECREF(value);
            goto done;
        }
    }
    if ((result = PyDict_New()) == NULL)
        goto done;
    if (fill(result, r->fold, pairs.items, pairs.count) < 0) {
        Py_CLEAR(result);
        goto done;
    }
    if (PyDict_GET_SIZE(result) < pairs.count) {
        Py_DECREF(result);
        result = refill_sorted(r->fold, &pairs);
    }
    *pos = p + 1;
done:
    pairs_free(&pairs);
    return result;
}

static PyObject *decode_value(const Reader *r, Py_ssize_t *pos, int depth) {
    Py_ssize_t p = *pos, start, end;
    if (p >= r->len)
        return fail(RAN_OFF_THE_END);
    unsigned char kind = r->data[p];
    if (kind == 'd')
        return decode_dict(r, pos, depth);
    if (is_digit(kind)) {
        if (read_string(r, p, &start, &end) < 0)
            return NULL;
        *pos = end;
        return bytes_text(r->data + start, end - start);
    }
    if (kind == 'i')
        return decode_integer(r, pos);
    if (kind == 'l')
        return decode_list(r, pos, depth);
    PyErr_Format(BencodeError, "unexpected byte 0x%02x", (unsigned)kind);
    return NULL;
}

/* bdecode(data, *, fold_keys=None): exactly one value, else BencodeError. */
PyObject *bdecode(PyObject *module, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    (void)module;
    if (nargs != 1) {
        PyErr_Format(PyExc_TypeError, "bdecode() takes 1 positional argument but %zd were given",
                     nargs);
        return NULL;
    }
    Reader reader = {.fold = NULL};
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i);
        if (!PyUnicode_Check(name) || PyUnicode_CompareWithASCIIString(name, "fold_keys") != 0) {
            PyErr_Format(PyExc_TypeError, "bdecode() got an unexpected keyword argument '%S'",
                         name);
            return NULL;
        }
        reader.fold = args[nargs + i] == Py_None ? NULL : args[nargs + i];
    }
    Py_buffer view = {.obj = NULL};
    if (PyBytes_CheckExact(args[0])) {
        reader.data = (const unsigned char *)PyBytes_AS_STRING(args[0]);
        reader.len = PyBytes_GET_SIZE(args[0]);
    } else {
        if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
            return NULL;
        reader.data = view.buf;
        reader.len = view.len;
    }
    Py_ssize_t pos = 0;
    PyObject *value = decode_value(&reader, &pos, 0);
    if (view.obj != NULL)
        PyBuffer_Release(&view);
    if (value == NULL) {
        /* As the Python: a key not UTF-8, or a ValueError of the folding, is a BencodeError
         * with the same message. */
        if (!PyErr_ExceptionMatches(BencodeError) &&
            (PyErr_ExceptionMatches(PyExc_ValueError) ||
             PyErr_ExceptionMatches(PyExc_IndexError))) {
            PyObject *type, *exc, *traceback;
            PyErr_Fetch(&type, &exc, &traceback);
            PyErr_NormalizeException(&type, &exc, &traceback);
            PyObject *message = exc == NULL ? NULL : PyObject_Str(exc);
            Py_XDECREF(type);
            Py_XDECREF(exc);
            Py_XDECREF(traceback);
            if (message != NULL) {
                PyErr_SetObject(BencodeError, message);
                Py_DECREF(message);
            }
        }
        return NULL;
    }
    if (pos != reader.len) {
        Py_DECREF(value);
        return fail("data after the value");
    }
    return value;
}
