/* openai_flavor._fast: the compiled twin of the WebSocket client's per-message framing
 * (issue 14). openai_flavor/websocket/framing.py's encode_frame is the reference; this does the same
 * byte for byte (tests/test_fast_ws.py), one pass instead of a big-integer XOR and three
 * concatenations: every caller packet becomes one input_audio_buffer.append frame, and the
 * masking was ~3/4 of its Python cost (the base64 and JSON around it are already one C call
 * and two concatenations, events.audio_append: not worth a Realtime-specific API here).
 *
 *   encode_frame(opcode, payload, key) -> bytes   one final, masked client frame (RFC 6455
 *                                                  section 5.2); key: the 4-byte masking key
 *
 * Selected once at import by openai_flavor/websocket/framing.py (media/native.py decides).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_HEADER 14 /* 2 + 8 (64-bit length) + 4 (key) */

/* The frame header for a payload of `size` bytes, mask bit set, then the key; returns its
 * length. */
static Py_ssize_t frame_header(uint8_t *out, int opcode, uint64_t size, const uint8_t *key) {
    Py_ssize_t n;
    out[0] = (uint8_t)(0x80 | opcode);
    if (size < 126) {
        out[1] = (uint8_t)(0x80 | size);
        n = 2;
    } else if (size < 65536) {
        out[1] = 0x80 | 126;
        out[2] = (uint8_t)(size >> 8);
        out[3] = (uint8_t)size;
        n = 4;
    } else {
        out[1] = 0x80 | 127;
        for (int i = 0; i < 8; i++)
            out[2 + i] = (uint8_t)(size >> (56 - 8 * i));
        n = 10;
    }
    memcpy(out + n, key, 4);
    return n + 4;
}

static int get_key(PyObject *arg, Py_buffer *key) {
    if (PyObject_GetBuffer(arg, key, PyBUF_SIMPLE) < 0)
        return -1;
    if (key->len != 4) {
        PyBuffer_Release(key);
        PyErr_SetString(PyExc_ValueError, "a masking key is 4 bytes");
        return -1;
    }
    return 0;
}

static int get_opcode(PyObject *arg, int *opcode) {
    long v = PyLong_AsLong(arg);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v < 0 || v > 0x0F) {
        PyErr_SetString(PyExc_ValueError, "an opcode is 4 bits");
        return -1;
    }
    *opcode = (int)v;
    return 0;
}

static PyObject *encode_frame(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "encode_frame(opcode, payload, key)");
        return NULL;
    }
    int opcode;
    if (get_opcode(args[0], &opcode) < 0)
        return NULL;
    Py_buffer payload, key;
    if (PyObject_GetBuffer(args[1], &payload, PyBUF_SIMPLE) < 0)
        return NULL;
    if (get_key(args[2], &key) < 0) {
        PyBuffer_Release(&payload);
        return NULL;
    }
    uint8_t header[MAX_HEADER];
    Py_ssize_t head = frame_header(header, opcode, (uint64_t)payload.len, key.buf);
    PyObject *out = PyBytes_FromStringAndSize(NULL, head + payload.len);
    if (out != NULL) {
        uint8_t *p = (uint8_t *)PyBytes_AS_STRING(out);
        const uint8_t *in = payload.buf, *k = key.buf;
        memcpy(p, header, (size_t)head);
        p += head;
        for (Py_ssize_t i = 0; i < payload.len; i++)
            p[i] = in[i] ^ k[i & 3];
    }
    PyBuffer_Release(&payload);
    PyBuffer_Release(&key);
    return out;
}

static PyMethodDef module_methods[] = {
    {"encode_frame", (PyCFunction)(void (*)(void))encode_frame, METH_FASTCALL,
     "One final, masked client frame: encode_frame(opcode, payload, key)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "openai_flavor._fast",
    "openai_flavor/websocket/framing.py's per-message framing, compiled.", -1, module_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fast(void) { return PyModule_Create(&module_def); }
