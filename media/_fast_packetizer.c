/* media._fast, part 2: RtpPacketizer, the twin of media/rtp.py's, with send() (packet() and
 * sendto() in one call) and pack_address(), the destinations send() takes (see _fast.c).
 */
#include "_fast.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/uio.h>

/* --- RtpPacketizer --------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    uint32_t ssrc;
    uint32_t timestamp;
    uint16_t sequence;
    uint8_t payload_type;
    uint8_t marker_pending;
} PacketizerObject;

static int random_bits(void *out, size_t size) {
    /* secrets.randbits's source: the kernel's CSPRNG (RFC 3550 section 5.1 wants the
     * initial values unpredictable). */
    if (getrandom(out, size, 0) != (ssize_t)size) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return 0;
}

/* An int in [0, limit], as struct.pack would take it for the field; else ValueError. */
static int field_value(PyObject *value, unsigned long long limit, const char *name,
                       unsigned long long *out) {
    if (!PyLong_Check(value)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int", name);
        return -1;
    }
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (overflow || v < 0 || (unsigned long long)v > limit) {
        PyErr_Format(PyExc_ValueError, "%s out of range: %R", name, value);
        return -1;
    }
    *out = (unsigned long long)v;
    return 0;
}

static int packetizer_init(PacketizerObject *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"payload_type", "ssrc", "sequence", "timestamp", NULL};
    PyObject *pt = NULL, *ssrc = Py_None, *sequence = Py_None, *timestamp = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|$OOO:RtpPacketizer", keywords, &pt,
                                     &ssrc, &sequence, &timestamp))
        return -1;
    unsigned long long v;
    if (field_value(pt, 0x7F, "payload_type", &v) < 0)
        return -1;
    self->payload_type = (uint8_t)v;
    uint32_t r32;
    uint16_t r16;
    if (ssrc == Py_None) {
        if (random_bits(&r32, sizeof r32) < 0)
            return -1;
        self->ssrc = r32;
    } else {
        if (field_value(ssrc, 0xFFFFFFFFull, "ssrc", &v) < 0)
            return -1;
        self->ssrc = (uint32_t)v;
    }
    if (sequence == Py_None) {
        if (random_bits(&r16, sizeof r16) < 0)
            return -1;
        self->sequence = r16;
    } else {
        if (field_value(sequence, 0xFFFF, "sequence", &v) < 0)
            return -1;
        self->sequence = (uint16_t)v;
    }
    if (timestamp == Py_None) {
        if (random_bits(&r32, sizeof r32) < 0)
            return -1;
        self->timestamp = r32;
    } else {
        if (field_value(timestamp, 0xFFFFFFFFull, "timestamp", &v) < 0)
            return -1;
        self->timestamp = (uint32_t)v;
    }
    self->marker_pending = 1;
    return 0;
}

/* samples as Python's `(timestamp + samples) & 0xFFFFFFFF` takes them: any int, reduced
 * modulo 2**32 (PyLong_AsUnsignedLongLongMask is exact modulo 2**64, negatives included). */
static int samples_value(PyObject *value, uint32_t *out) {
    if (!PyLong_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "samples must be an int");
        return -1;
    }
    unsigned long long v = PyLong_AsUnsignedLongLongMask(value);
    if (v == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    *out = (uint32_t)v;
    return 0;
}

/* The header of the next packet into `p` (12 bytes), and the stream moves on. */
static void next_header(PacketizerObject *self, uint8_t *p, uint32_t samples) {
    uint16_t seq = self->sequence;
    uint32_t ts = self->timestamp, ssrc = self->ssrc;
    rtp_write_header(p, self->marker_pending, self->payload_type, seq, ts, ssrc);
    self->marker_pending = 0;
    self->sequence = (uint16_t)(seq + 1);
    self->timestamp = ts + samples; /* unsigned: wraps modulo 2**32 */
}

static PyObject *packetizer_packet(PacketizerObject *self, PyObject *const *args,
                                   Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "packet(payload, samples)");
        return NULL;
    }
    uint32_t samples;
    if (samples_value(args[1], &samples) < 0)
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *out = PyBytes_FromStringAndSize(NULL, RTP_HEADER_SIZE + view.len);
    if (out == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    uint8_t *p = (uint8_t *)PyBytes_AS_STRING(out);
    next_header(self, p, samples);
    if (view.len)
        memcpy(p + RTP_HEADER_SIZE, view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    return out;
}

/* send(fd, payload, samples, address): the next packet, as packet() builds it, sent to
 * `address` (from pack_address) on socket `fd` without blocking. Returns the datagram's size;
 * raises OSError as socket.sendto does (BlockingIOError when the buffer is full). The stream
 * moves on whether or not the send succeeds, as packet() followed by a failed sendto. */
static PyObject *packetizer_send(PacketizerObject *self, PyObject *const *args,
                                 Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "send(fd, payload, samples, address)");
        return NULL;
    }
    long fd = PyLong_AsLong(args[0]);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    if (fd < 0 || fd > INT_MAX) { /* a closed socket's fileno(): sendto's error */
        errno = EBADF;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    uint32_t samples;
    if (samples_value(args[2], &samples) < 0)
        return NULL;
    if (!PyBytes_Check(args[3]) ||
        (PyBytes_GET_SIZE(args[3]) != sizeof(struct sockaddr_in) &&
         PyBytes_GET_SIZE(args[3]) != sizeof(struct sockaddr_in6))) {
        PyErr_SetString(PyExc_TypeError, "address: bytes from pack_address()");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    uint8_t header[RTP_HEADER_SIZE];
    next_header(self, header, samples);
    struct iovec parts[2] = {{header, RTP_HEADER_SIZE}, {view.buf, (size_t)view.len}};
    struct msghdr message;
    memset(&message, 0, sizeof message);
    message.msg_name = PyBytes_AS_STRING(args[3]);
    message.msg_namelen = (socklen_t)PyBytes_GET_SIZE(args[3]);
    message.msg_iov = parts;
    message.msg_iovlen = view.len ? 2 : 1;
    ssize_t sent;
    /* No GIL release: a non-blocking send to loopback or a NIC's queue takes microseconds,
     * less than giving the GIL away and taking it back. */
    do {
        sent = sendmsg((int)fd, &message, MSG_DONTWAIT);
    } while (sent < 0 && errno == EINTR);
    PyBuffer_Release(&view);
    if (sent < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    return PyLong_FromSsize_t(sent);
}

static PyObject *packetizer_start_talkspurt(PacketizerObject *self, PyObject *unused) {
    (void)unused;
    self->marker_pending = 1;
    Py_RETURN_NONE;
}

static PyObject *packetizer_silence_gap(PacketizerObject *self, PyObject *arg) {
    uint32_t samples;
    if (samples_value(arg, &samples) < 0)
        return NULL;
    self->timestamp += samples;
    self->marker_pending = 1;
    Py_RETURN_NONE;
}

static PyObject *get_payload_type(PacketizerObject *self, void *c) {
    (void)c;
    return PyLong_FromLong(self->payload_type);
}
static PyObject *get_ssrc(PacketizerObject *self, void *c) {
    (void)c;
    return PyLong_FromUnsignedLong(self->ssrc);
}
static PyObject *get_sequence(PacketizerObject *self, void *c) {
    (void)c;
    return PyLong_FromLong(self->sequence);
}
static PyObject *get_timestamp(PacketizerObject *self, void *c) {
    (void)c;
    return PyLong_FromUnsignedLong(self->timestamp);
}

/* Whether the next packet carries the marker bit: read and set when a stream moves between
 * the media send thread and this packetizer (media/sender.py). */
static PyObject *get_marker_pending(PacketizerObject *self, void *c) {
    (void)c;
    return PyBool_FromLong(self->marker_pending);
}
static int set_marker_pending(PacketizerObject *self, PyObject *value, void *c) {
    (void)c;
    int truth = value == NULL ? -1 : PyObject_IsTrue(value);
    if (truth < 0) {
        if (value == NULL)
            PyErr_SetString(PyExc_AttributeError, "cannot delete marker_pending");
        return -1;
    }
    self->marker_pending = (uint8_t)truth;
    return 0;
}

static int set_field(PacketizerObject *self, PyObject *value, void *closure) {
    const char *name = closure;
    if (value == NULL) {
        PyErr_Format(PyExc_AttributeError, "cannot delete %s", name);
        return -1;
    }
    unsigned long long v;
    switch (name[1]) { /* payload_type, ssrc, sequence (e), timestamp (i) */
    case 'a':
        if (field_value(value, 0x7F, name, &v) < 0)
            return -1;
        self->payload_type = (uint8_t)v;
        return 0;
    case 's':
        if (field_value(value, 0xFFFFFFFFull, name, &v) < 0)
            return -1;
        self->ssrc = (uint32_t)v;
        return 0;
    case 'e':
        if (field_value(value, 0xFFFF, name, &v) < 0)
            return -1;
        self->sequence = (uint16_t)v;
        return 0;
    default:
        if (field_value(value, 0xFFFFFFFFull, name, &v) < 0)
            return -1;
        self->timestamp = (uint32_t)v;
        return 0;
    }
}

static PyGetSetDef packetizer_getset[] = {
    {"payload_type", (getter)get_payload_type, (setter)set_field, NULL, "payload_type"},
    {"ssrc", (getter)get_ssrc, (setter)set_field, NULL, "ssrc"},
    {"sequence", (getter)get_sequence, (setter)set_field, NULL, "sequence"},
    {"timestamp", (getter)get_timestamp, (setter)set_field, NULL, "timestamp"},
    {"marker_pending", (getter)get_marker_pending, (setter)set_marker_pending, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef packetizer_methods[] = {
    {"packet", (PyCFunction)(void (*)(void))packetizer_packet, METH_FASTCALL,
     "The next RTP packet carrying payload (samples long at the codec's clock)."},
    {"send", (PyCFunction)(void (*)(void))packetizer_send, METH_FASTCALL,
     "packet() sent to a pack_address() destination on socket fd, in one call."},
    {"start_talkspurt", (PyCFunction)packetizer_start_talkspurt, METH_NOARGS,
     "The next packet begins a talkspurt and carries the marker bit."},
    {"silence_gap", (PyCFunction)packetizer_silence_gap, METH_O,
     "Account for samples of silence that were not sent."},
    {NULL, NULL, 0, NULL},
};

PyTypeObject PacketizerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "media._fast.RtpPacketizer",
    .tp_doc = "Our outbound RTP stream (media.rtp.RtpPacketizer's compiled twin).",
    .tp_basicsize = sizeof(PacketizerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)packetizer_init,
    .tp_methods = packetizer_methods,
    .tp_getset = packetizer_getset,
};

/* --- destinations ------------------------------------------------------------------------ */

/* The sockaddr for (host, port) of `family`, as bytes; None when `host` is not a numeric
 * address of that family (a name, a scoped IPv6 address: socket.sendto resolves those). */
PyObject *pack_address(PyObject *module, PyObject *args) {
    (void)module;
    int family, port;
    const char *host;
    if (!PyArg_ParseTuple(args, "isi:pack_address", &family, &host, &port))
        return NULL;
    if (port < 0 || port > 65535) {
        PyErr_SetString(PyExc_OverflowError, "port must be 0-65535.");
        return NULL;
    }
    if (family == AF_INET) {
        struct sockaddr_in a;
        memset(&a, 0, sizeof a);
        a.sin_family = AF_INET;
        a.sin_port = htons((uint16_t)port);
        if (inet_pton(AF_INET, host, &a.sin_addr) != 1)
            Py_RETURN_NONE;
        return PyBytes_FromStringAndSize((const char *)&a, sizeof a);
    }
    if (family == AF_INET6) {
        struct sockaddr_in6 a;
        memset(&a, 0, sizeof a);
        a.sin6_family = AF_INET6;
        a.sin6_port = htons((uint16_t)port);
        if (inet_pton(AF_INET6, host, &a.sin6_addr) != 1)
            Py_RETURN_NONE;
        return PyBytes_FromStringAndSize((const char *)&a, sizeof a);
    }
    Py_RETURN_NONE;
}
