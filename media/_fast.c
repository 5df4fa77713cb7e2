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
 *   SendEngine, SendStream           the media send thread: every call's paced RTP sent by
 *                                    one pthread without the GIL (media/send_thread.py)
 *
 * In parts: _fast_packet.c (RtpPacket, parse_rtp: the untrusted bytes), _fast_packetizer.c
 * (RtpPacketizer, send, pack_address), _fast_timer.c, _fast_sendthread.c; this file binds them into the module.
 */
#include "_fast.h"

PyObject *RtpError; /* set by bind(); ValueError until then */

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
    if (PyType_Ready(&RtpPacketType) < 0 || PyType_Ready(&PacketizerType) < 0 ||
        PyType_Ready(&SendEngineType) < 0 || PyType_Ready(&SendStreamType) < 0)
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
    Py_INCREF(&SendEngineType);
    Py_INCREF(&SendStreamType);
    if (PyModule_AddObject(module, "RtpPacket", (PyObject *)&RtpPacketType) < 0 ||
        PyModule_AddObject(module, "RtpPacketizer", (PyObject *)&PacketizerType) < 0 ||
        PyModule_AddObject(module, "SendEngine", (PyObject *)&SendEngineType) < 0 ||
        PyModule_AddObject(module, "SendStream", (PyObject *)&SendStreamType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
