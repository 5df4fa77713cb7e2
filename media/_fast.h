/* media/_fast.h: what the parts of media._fast share (media/_fast.c has the overview). */
#ifndef RTPAI_MEDIA_FAST_H
#define RTPAI_MEDIA_FAST_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#define RTP_HEADER_SIZE 12

/* media.rtp.RtpError once bind() has been called; ValueError until then (_fast.c). */
extern PyObject *RtpError;

/* _fast_packet.c */
extern PyTypeObject RtpPacketType;
PyObject *parse_rtp(PyObject *module, PyObject *arg);

/* _fast_packetizer.c */
extern PyTypeObject PacketizerType;
PyObject *pack_address(PyObject *module, PyObject *args);

/* _fast_timer.c */
PyObject *timer_open(PyObject *module, PyObject *unused);
PyObject *timer_arm(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
PyObject *timer_clear(PyObject *module, PyObject *arg);

/* _fast_sendthread.c */
extern PyTypeObject SendEngineType, SendStreamType;

#endif
