/* media._fast, part 1: RtpPacket and parse_rtp, the twins of media/rtp.py's (see _fast.c).
 *
 * parse_rtp reads untrusted datagrams: only inside the buffer it was given, every offset in
 * Py_ssize_t from at most 16-bit fields, so nothing here can overflow. Fuzzed against the
 * Python parser (tests/test_fast_rtp.py) and under ASan and UBSan (make asan).
 */
#include "_fast.h"

#include <structmember.h>

/* --- RtpPacket ------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *payload_type;
    PyObject *marker;
    PyObject *sequence;
    PyObject *timestamp;
    PyObject *ssrc;
    PyObject *payload;
} RtpPacketObject;

static const char *const packet_fields[] = {
    "payload_type", "marker", "sequence", "timestamp", "ssrc", "payload", NULL};

static void packet_dealloc(RtpPacketObject *self) {
    Py_XDECREF(self->payload_type);
    Py_XDECREF(self->marker);
    Py_XDECREF(self->sequence);
    Py_XDECREF(self->timestamp);
    Py_XDECREF(self->ssrc);
    Py_XDECREF(self->payload);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject **packet_slot(RtpPacketObject *self, int i) {
    switch (i) {
    case 0: return &self->payload_type;
    case 1: return &self->marker;
    case 2: return &self->sequence;
    case 3: return &self->timestamp;
    case 4: return &self->ssrc;
    default: return &self->payload;
    }
}

/* Positional or keyword, as the dataclass's __init__; the fields are not type-checked there
 * either. */
static int packet_init(RtpPacketObject *self, PyObject *args, PyObject *kwargs) {
    PyObject *values[6] = {NULL, NULL, NULL, NULL, NULL, NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOO:RtpPacket", (char **)packet_fields,
                                     &values[0], &values[1], &values[2], &values[3],
                                     &values[4], &values[5]))
        return -1;
    for (int i = 0; i < 6; i++) {
        PyObject **slot = packet_slot(self, i);
        Py_INCREF(values[i]);
        Py_XSETREF(*slot, values[i]);
    }
    return 0;
}

static PyObject *packet_repr(RtpPacketObject *self) {
    for (int i = 0; i < 6; i++)
        if (*packet_slot(self, i) == NULL) /* RtpPacket.__new__ without __init__ */
            return PyUnicode_FromString("RtpPacket(<uninitialized>)");
    return PyUnicode_FromFormat(
        "RtpPacket(payload_type=%R, marker=%R, sequence=%R, timestamp=%R, ssrc=%R, payload=%R)",
        self->payload_type, self->marker, self->sequence, self->timestamp, self->ssrc,
        self->payload);
}

/* Equal when every field is, as the dataclass's __eq__ (same class only). */
static PyObject *packet_richcompare(PyObject *a, PyObject *b, int op) {
    if ((op != Py_EQ && op != Py_NE) || Py_TYPE(b) != Py_TYPE(a))
        Py_RETURN_NOTIMPLEMENTED;
    RtpPacketObject *x = (RtpPacketObject *)a, *y = (RtpPacketObject *)b;
    for (int i = 0; i < 6; i++) {
        PyObject *u = *packet_slot(x, i), *v = *packet_slot(y, i);
        if (u == NULL || v == NULL) {
            if (u != v)
                return PyBool_FromLong(op == Py_NE);
            continue;
        }
        int same = PyObject_RichCompareBool(u, v, Py_EQ);
        if (same < 0)
            return NULL;
        if (!same)
            return PyBool_FromLong(op == Py_NE);
    }
    return PyBool_FromLong(op == Py_EQ);
}

static PyMemberDef packet_members[] = {
    {"payload_type", T_OBJECT_EX, offsetof(RtpPacketObject, payload_type), READONLY, NULL},
    {"marker", T_OBJECT_EX, offsetof(RtpPacketObject, marker), READONLY, NULL},
    {"sequence", T_OBJECT_EX, offsetof(RtpPacketObject, sequence), READONLY, NULL},
    {"timestamp", T_OBJECT_EX, offsetof(RtpPacketObject, timestamp), READONLY, NULL},
    {"ssrc", T_OBJECT_EX, offsetof(RtpPacketObject, ssrc), READONLY, NULL},
    {"payload", T_OBJECT_EX, offsetof(RtpPacketObject, payload), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

/* Not garbage-collected: parse_rtp fills the fields with ints, a bool and bytes, which
 * cannot refer back to the packet (and a packet built by hand is a test's). Tracking would
 * cost every packet received a collector's allocation count. */
PyTypeObject RtpPacketType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "media._fast.RtpPacket",
    .tp_doc = "A parsed RTP packet (media.rtp.RtpPacket's compiled twin).",
    .tp_basicsize = sizeof(RtpPacketObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)packet_init,
    .tp_dealloc = (destructor)packet_dealloc,
    .tp_repr = (reprfunc)packet_repr,
    .tp_richcompare = packet_richcompare,
    .tp_hash = PyObject_HashNotImplemented, /* mutable-dataclass semantics: unhashable */
    .tp_members = packet_members,
};

/* --- parse_rtp ------------------------------------------------------------------------- */

static PyObject *rtp_error(const char *why) {
    PyErr_SetString(RtpError, why);
    return NULL;
}

PyObject *parse_rtp(PyObject *module, PyObject *arg) {
    (void)module;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const uint8_t *data = view.buf;
    Py_ssize_t size = view.len;
    PyObject *result = NULL;
    if (size < RTP_HEADER_SIZE) {
        rtp_error("shorter than an RTP header");
        goto done;
    }
    uint8_t first = data[0], second = data[1];
    if (first >> 6 != 2) {
        rtp_error("not RTP version 2");
        goto done;
    }
    Py_ssize_t offset = RTP_HEADER_SIZE + 4 * (Py_ssize_t)(first & 0x0F);
    if (first & 0x10) { /* header extension: profile, length in 32-bit words */
        if (size < offset + 4) {
            rtp_error("header extension runs past the packet");
            goto done;
        }
        Py_ssize_t words = ((Py_ssize_t)data[offset + 2] << 8) | data[offset + 3];
        offset += 4 + 4 * words;
    }
    Py_ssize_t end = size;
    if (first & 0x20) { /* padding: the last octet counts the padding, itself included */
        uint8_t padding = data[size - 1];
        if (padding == 0) {
            rtp_error("padding count of zero");
            goto done;
        }
        end -= padding;
    }
    if (offset > end) {
        rtp_error("header lengths run past the packet");
        goto done;
    }
    uint32_t timestamp = ((uint32_t)data[4] << 24) | ((uint32_t)data[5] << 16) |
                         ((uint32_t)data[6] << 8) | data[7];
    uint32_t ssrc = ((uint32_t)data[8] << 24) | ((uint32_t)data[9] << 16) |
                    ((uint32_t)data[10] << 8) | data[11];
    RtpPacketObject *packet = PyObject_New(RtpPacketObject, &RtpPacketType);
    if (packet == NULL)
        goto done;
    packet->payload_type = PyLong_FromLong(second & 0x7F);
    packet->marker = PyBool_FromLong(second & 0x80);
    packet->sequence = PyLong_FromLong(((long)data[2] << 8) | data[3]);
    packet->timestamp = PyLong_FromUnsignedLong(timestamp);
    packet->ssrc = PyLong_FromUnsignedLong(ssrc);
    packet->payload = PyBytes_FromStringAndSize((const char *)data + offset, end - offset);
    if (!packet->payload_type || !packet->sequence || !packet->timestamp || !packet->ssrc ||
        !packet->payload) {
        Py_DECREF(packet); /* dealloc takes the NULLs */
        goto done;
    }
    result = (PyObject *)packet;
done:
    PyBuffer_Release(&view);
    return result;
}
