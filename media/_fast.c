/* media._fast: the compiled twin of media/rtp.py's per-packet work (issue 14).
 *
 * media/rtp.py is the reference: every function here does exactly what its Python twin does,
 * byte for byte and error for error, and tests/test_fast_rtp.py holds the two to that on
 * random streams and random bytes. media/native.py selects this module once, at import;
 * without it (no compiler at install time, RTPAI_PURE_PYTHON=1) the Python twins run.
 *
 *   parse_rtp(data) -> RtpPacket     RFC 3550 section 5.1, every length checked; raises the
 *                                    error class given to bind() (media.rtp.RtpError)
 *   RtpPacket(pt, marker, seq, ts, ssrc, payload)   the parsed packet, read-only fields
 *   RtpPacketizer(pt, *, ssrc=None, sequence=None, timestamp=None)   our outbound stream;
 *       its send(fd, payload, samples, address) is packet() and socket.sendto() in one:
 *       header and payload go out as one datagram from two buffers (sendmsg), no bytes built
 *   pack_address(family, host, port) -> bytes | None   the sockaddr send() takes, made once
 *       per destination (None: not a numeric address of that family; use socket.sendto)
 *   bind(error_class)                the exception parse_rtp raises (called by media/rtp.py)
 *   timer_open() -> fd               a one-shot CLOCK_MONOTONIC timerfd, non-blocking: what the
 *   timer_arm(fd, delay)             media clock waits on (media/clock.py) instead of a trio
 *   timer_clear(fd) -> expirations   cancel scope; Python 3.11 has no os.timerfd_create
 *
 * Untrusted bytes: parse_rtp reads only inside the buffer it was given, and every offset is
 * computed in Py_ssize_t from at most 16-bit fields, so nothing here can overflow. It is
 * fuzzed against the Python parser (tests/test_fast_rtp.py) and was run under ASan
 * (docs/performance.md, round 4).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/uio.h>
#include <unistd.h>

#define RTP_HEADER_SIZE 12

static PyObject *RtpError; /* set by bind(); ValueError until then */

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

static PyTypeObject RtpPacketType;

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
static PyTypeObject RtpPacketType = {
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

static PyObject *parse_rtp(PyObject *module, PyObject *arg) {
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
    p[0] = 0x80;
    p[1] = (uint8_t)((self->marker_pending ? 0x80 : 0) | self->payload_type);
    p[2] = (uint8_t)(seq >> 8);
    p[3] = (uint8_t)seq;
    p[4] = (uint8_t)(ts >> 24);
    p[5] = (uint8_t)(ts >> 16);
    p[6] = (uint8_t)(ts >> 8);
    p[7] = (uint8_t)ts;
    p[8] = (uint8_t)(ssrc >> 24);
    p[9] = (uint8_t)(ssrc >> 16);
    p[10] = (uint8_t)(ssrc >> 8);
    p[11] = (uint8_t)ssrc;
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

static PyTypeObject PacketizerType = {
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
static PyObject *pack_address(PyObject *module, PyObject *args) {
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

/* --- the media clock's timer ------------------------------------------------------------ */

static int fd_value(PyObject *arg) {
    long v = PyLong_AsLong(arg);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v < 0 || v > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "not a file descriptor");
        return -1;
    }
    return (int)v;
}

static PyObject *timer_open(PyObject *module, PyObject *unused) {
    (void)module;
    (void)unused;
    int fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (fd < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    return PyLong_FromLong(fd);
}

/* Fire once, `delay` seconds from now: at once (1 ns) if it is not positive, never if it is
 * infinite (disarmed). */
static PyObject *timer_arm(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "timer_arm(fd, delay)");
        return NULL;
    }
    int fd = fd_value(args[0]);
    if (fd < 0)
        return NULL;
    double delay = PyFloat_AsDouble(args[1]);
    if (delay == -1.0 && PyErr_Occurred())
        return NULL;
    struct itimerspec spec = {{0, 0}, {0, 0}};
    if (isnan(delay)) {
        PyErr_SetString(PyExc_ValueError, "delay is NaN");
        return NULL;
    }
    if (!isinf(delay)) {
        if (delay > 86400.0)
            delay = 86400.0; /* a day: the clock is re-armed long before */
        if (delay <= 0.0) {
            spec.it_value.tv_nsec = 1; /* zero would disarm it */
        } else {
            spec.it_value.tv_sec = (time_t)delay;
            spec.it_value.tv_nsec = (long)((delay - (double)spec.it_value.tv_sec) * 1e9);
            if (spec.it_value.tv_nsec > 999999999L)
                spec.it_value.tv_nsec = 999999999L; /* rounding: EINVAL otherwise */
            if (spec.it_value.tv_sec == 0 && spec.it_value.tv_nsec == 0)
                spec.it_value.tv_nsec = 1;
        }
    }
    if (timerfd_settime(fd, 0, &spec, NULL) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

/* Take the expiration count, so the descriptor stops being readable: 0 if it had not fired. */
static PyObject *timer_clear(PyObject *module, PyObject *arg) {
    (void)module;
    int fd = fd_value(arg);
    if (fd < 0)
        return NULL;
    uint64_t expirations = 0;
    if (read(fd, &expirations, sizeof expirations) != (ssize_t)sizeof expirations) {
        if (errno == EAGAIN)
            return PyLong_FromLong(0);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromUnsignedLongLong(expirations);
}

/* --- module ---------------------------------------------------------------------------- */

static PyObject *bind_error(PyObject *module, PyObject *error_class) {
    (void)module;
    if (!PyType_Check(error_class) ||
        !PyType_IsSubtype((PyTypeObject *)error_class, (PyTypeObject *)PyExc_Exception)) {
        PyErr_SetString(PyExc_TypeError, "bind() takes an exception class");
        return NULL;
    }
    Py_INCREF(error_class);
    Py_XSETREF(RtpError, error_class);
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"parse_rtp", parse_rtp, METH_O,
     "Parse an RTP packet, checking every length the header claims."},
    {"bind", bind_error, METH_O, "The exception class parse_rtp raises (media.rtp.RtpError)."},
    {"pack_address", pack_address, METH_VARARGS,
     "The sockaddr RtpPacketizer.send takes for (host, port), or None."},
    {"timer_open", timer_open, METH_NOARGS, "A one-shot monotonic timerfd, non-blocking."},
    {"timer_arm", (PyCFunction)(void (*)(void))timer_arm, METH_FASTCALL,
     "Fire once, delay seconds from now (at once if not positive, never if infinite)."},
    {"timer_clear", timer_clear, METH_O, "Read the expiration count (0 if it had not fired)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "media._fast", "media/rtp.py's per-packet work, compiled.", -1,
    module_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fast(void) {
    if (PyType_Ready(&RtpPacketType) < 0 || PyType_Ready(&PacketizerType) < 0)
        return NULL;
    PyObject *match_args = Py_BuildValue("(ssssss)", "payload_type", "marker", "sequence",
                                         "timestamp", "ssrc", "payload");
    if (match_args == NULL ||
        PyDict_SetItemString(RtpPacketType.tp_dict, "__match_args__", match_args) < 0) {
        Py_XDECREF(match_args);
        return NULL;
    }
    Py_DECREF(match_args);
    PyType_Modified(&RtpPacketType);
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL)
        return NULL;
    if (RtpError == NULL) {
        RtpError = PyExc_ValueError;
        Py_INCREF(RtpError);
    }
    Py_INCREF(&RtpPacketType);
    Py_INCREF(&PacketizerType);
    if (PyModule_AddObject(module, "RtpPacket", (PyObject *)&RtpPacketType) < 0 ||
        PyModule_AddObject(module, "RtpPacketizer", (PyObject *)&PacketizerType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
