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

/* RFC 3550 5.1: a version-2 header with no padding, extension or CSRC, in 12 bytes at `p`;
 * shared by the packetizer and the send thread so that the two can never differ. */
static inline void rtp_write_header(uint8_t *p, int marker, uint8_t payload_type, uint16_t seq,
                                    uint32_t ts, uint32_t ssrc) {
    p[0] = 0x80;
    p[1] = (uint8_t)((marker ? 0x80 : 0) | payload_type);
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
}

#endif
