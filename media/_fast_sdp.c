/* media._fast_sdp: the compiled twin of media/sdp_parse.py's py_split_sdp (issue 14).
 *
 * An offer's SDP is split into lines, each stripped, checked for ``<letter>=`` and filed under
 * the session or its m-section, its attributes split into (name, value): one pass over the
 * text here, where the Python makes a list and a few strings per line before its parser reads
 * any of them (docs/performance.md, round 5). The rest of the parser (media/sdp_parse.py)
 * stays in Python and reads what this returns.
 *
 *   split_sdp(text) -> (session_lines, session_attributes, [(m_value, lines, attributes)])
 *       lines: [(letter, value)] but a=; attributes: [(name, value or None)], in order
 *   bind(unparseable, check_media_sections)   media/sdp_model.py's error for a body that is
 *       not SDP, and media/sdp_limits.py's bound, called before each m-section is opened
 *
 * It reads ASCII text only (a str whose every character is ASCII: what SDP is, but for the
 * odd session name); media/sdp_parse.py gives anything else to the Python. Its work is bounded
 * by what the caller checked first (media/sdp_limits.py: lines) and by the text's length: it
 * reads only inside the text, every index a Py_ssize_t below its length. The Python is the
 * reference: tests/test_fast_sdp.py holds the two to the same result, or the same SdpError, on
 * random and mutated offers, and make asan runs it under ASan and UBSan.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <string.h>

static PyObject *unparseable;          /* detail -> SdpError("Unparseable SDP: " + detail) */
static PyObject *check_media_sections; /* count -> None, or raises */

/* str.strip()'s whitespace, of ASCII (Py_UNICODE_ISSPACE: \x1c-\x1f are separators too). */
static int is_space(unsigned char c) {
    return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f);
}

static void strip(const unsigned char *s, Py_ssize_t *start, Py_ssize_t *end) {
    while (*start < *end && is_space(s[*start]))
        (*start)++;
    while (*end > *start && is_space(s[*end - 1]))
        (*end)--;
}

static PyObject *text_of(const unsigned char *s, Py_ssize_t start, Py_ssize_t end) {
    return PyUnicode_DecodeASCII((const char *)s + start, end - start, NULL);
}

/* Raise unparseable(detail); detail is a new reference, or NULL (an error is set). */
static void *raise_unparseable(PyObject *detail) {
    if (detail == NULL)
        return NULL;
    PyObject *error = PyObject_CallOneArg(unparseable, detail);
    Py_DECREF(detail);
    if (error != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(error), error);
        Py_DECREF(error);
    }
    return NULL;
}

/* "<prefix>{line[:40]!r}" */
static void *raise_about_line(const char *prefix, Py_ssize_t number, const unsigned char *s,
                              Py_ssize_t start, Py_ssize_t end) {
    PyObject *head = text_of(s, start, end - start > 40 ? start + 40 : end);
    if (head == NULL)
        return NULL;
    PyObject *detail = number > 0 ? PyUnicode_FromFormat("line %zd: %R", number, head)
                                  : PyUnicode_FromFormat("%s%R", prefix, head);
    Py_DECREF(head);
    return raise_unparseable(detail);
}

/* Append (a, b) to list; steals both references (either may be NULL: an error is set). */
static int append_pair(PyObject *list, PyObject *a, PyObject *b) {
    PyObject *pair = (a != NULL && b != NULL) ? PyTuple_Pack(2, a, b) : NULL;
    Py_XDECREF(a);
    Py_XDECREF(b);
    if (pair == NULL)
        return -1;
    int result = PyList_Append(list, pair);
    Py_DECREF(pair);
    return result;
}

/* One stripped, non-empty line s[start:end], number ``number`` of them. */
static int file_line(const unsigned char *s, Py_ssize_t start, Py_ssize_t end, Py_ssize_t number,
                     PyObject **lines, PyObject **attributes, PyObject *sections) {
    unsigned char letter = s[start];
    if (end - start < 2 || s[start + 1] != '=' || letter < 'a' || letter > 'z') {
        raise_about_line(NULL, number, s, start, end);
        return -1;
    }
    Py_ssize_t value = start + 2;
    if (letter == 'm') {
        PyObject *count = PyLong_FromSsize_t(PyList_GET_SIZE(sections));
        PyObject *checked = count == NULL ? NULL : PyObject_CallOneArg(check_media_sections, count);
        Py_XDECREF(count);
        if (checked == NULL)
            return -1;
        Py_DECREF(checked);
        PyObject *section_lines = PyList_New(0), *section_attributes = PyList_New(0);
        PyObject *m_value = text_of(s, value, end);
        PyObject *section = (section_lines && section_attributes && m_value)
            ? PyTuple_Pack(3, m_value, section_lines, section_attributes) : NULL;
        Py_XDECREF(m_value);
        Py_XDECREF(section_lines);
        Py_XDECREF(section_attributes);
        if (section == NULL || PyList_Append(sections, section) < 0) {
            Py_XDECREF(section);
            return -1;
        }
        *lines = PyTuple_GET_ITEM(section, 1); /* borrowed: the list holds the section */
        *attributes = PyTuple_GET_ITEM(section, 2);
        Py_DECREF(section);
        return 0;
    }
    if (letter == 'a') { /* name[:value], each stripped; no colon: no value */
        const unsigned char *colon = memchr(s + value, ':', (size_t)(end - value));
        Py_ssize_t name_end = colon != NULL ? colon - s : end, name_start = value;
        strip(s, &name_start, &name_end);
        PyObject *rest = Py_None;
        Py_INCREF(rest);
        if (colon != NULL) {
            Py_ssize_t rest_start = (colon - s) + 1, rest_end = end;
            strip(s, &rest_start, &rest_end);
            Py_SETREF(rest, text_of(s, rest_start, rest_end));
        }
        return append_pair(*attributes, text_of(s, name_start, name_end), rest);
    }
    return append_pair(*lines, PyUnicode_FromOrdinal(letter), text_of(s, value, end));
}

static PyObject *split_sdp(PyObject *module, PyObject *text) {
    (void)module;
    if (unparseable == NULL || check_media_sections == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "media._fast_sdp: bind() first");
        return NULL;
    }
#if PY_VERSION_HEX < 0x030C0000 /* strings are always ready from 3.12, which deprecates this */
    if (PyUnicode_Check(text) && PyUnicode_READY(text) < 0)
        return NULL;
#endif
    if (!PyUnicode_Check(text) || !PyUnicode_IS_ASCII(text)) {
        PyErr_SetString(PyExc_ValueError, "split_sdp() takes ASCII text");
        return NULL;
    }
    const unsigned char *s = PyUnicode_1BYTE_DATA(text);
    Py_ssize_t length = PyUnicode_GET_LENGTH(text), number = 0, at = 0;
    PyObject *session_lines = PyList_New(0), *session_attributes = PyList_New(0);
    PyObject *sections = PyList_New(0), *result = NULL;
    if (session_lines == NULL || session_attributes == NULL || sections == NULL)
        goto done;
    PyObject *lines = session_lines, *attributes = session_attributes; /* borrowed */
    while (at < length) {
        /* A line ends at CR LF, CR or LF (the Python replaces the first two by the third). */
        Py_ssize_t start = at, end = at;
        while (end < length && s[end] != '\n' && s[end] != '\r')
            end++;
        at = end + 1;
        if (end < length && s[end] == '\r' && at < length && s[at] == '\n')
            at++;
        strip(s, &start, &end);
        if (start == end)
            continue;
        number++;
        if (number == 1 && !(end - start == 3 && memcmp(s + start, "v=0", 3) == 0)) {
            raise_about_line("does not start with v=0: ", 0, s, start, end);
            goto done;
        }
        if (file_line(s, start, end, number, &lines, &attributes, sections) < 0)
            goto done;
    }
    if (number == 0) {
        raise_unparseable(PyUnicode_FromString("empty body"));
        goto done;
    }
    result = PyTuple_Pack(3, session_lines, session_attributes, sections);
done:
    Py_XDECREF(session_lines);
    Py_XDECREF(session_attributes);
    Py_XDECREF(sections);
    return result;
}

static PyObject *bind(PyObject *module, PyObject *args) {
    (void)module;
    PyObject *error_factory, *check;
    if (!PyArg_ParseTuple(args, "OO:bind", &error_factory, &check))
        return NULL;
    if (!PyCallable_Check(error_factory) || !PyCallable_Check(check)) {
        PyErr_SetString(PyExc_TypeError, "bind() takes two callables");
        return NULL;
    }
    Py_INCREF(error_factory);
    Py_XSETREF(unparseable, error_factory);
    Py_INCREF(check);
    Py_XSETREF(check_media_sections, check);
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"split_sdp", split_sdp, METH_O,
     "An SDP body's lines and attributes, by session and m-section (ASCII text)."},
    {"bind", bind, METH_VARARGS, "unparseable(detail) and check_media_sections(count)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "media._fast_sdp", "media/sdp_parse.py's line splitter, compiled.",
    -1, module_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fast_sdp(void) { return PyModule_Create(&module_def); }
