/* media._fast, part 6: SendStream, one call's stream on the media send thread (the overview
 * is in _fast_sendthread.c). */
#include "_fast_sendthread.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

/* --- SendStream: one call's stream, as the Python side holds it ---------------------------- */

static Stream *live(StreamObject *h) {
    if (h->stream == NULL)
        PyErr_SetString(PyExc_ValueError, "the stream is unregistered");
    return h->stream;
}


/* push(frames) -> consumed: whole frames to play after those queued (the Python side keeps
 * the partial tail and never exceeds ring_max); unparks the stream. */
static PyObject *stream_push(StreamObject *h, PyObject *arg) {
    Stream *s = live(h);
    if (s == NULL)
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    EngineObject *e = h->engine;
    if (view.len % s->frame_bytes) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "push(): whole frames only");
        return NULL;
    }
    uint32_t frames = (uint32_t)(view.len / s->frame_bytes);
    st_lock(e);
    int failed = 0;
    if ((uint64_t)s->count + frames > s->ring_max) {
        failed = 1;
    } else if (frames) {
        if (st_ring_reserve(s, frames) < 0) {
            failed = 2;
        } else {
            const uint8_t *from = view.buf;
            for (uint32_t i = 0; i < frames; i++)
                memcpy(s->ring + (size_t)((s->head + s->count + i) % s->ring_capacity) *
                                     s->frame_bytes,
                       from + (size_t)i * s->frame_bytes, s->frame_bytes);
            s->count += frames;
            failed = st_wake(e, s) ? 2 : 0;
        }
    }
    uint64_t consumed = s->consumed;
    st_unlock(e);
    PyBuffer_Release(&view);
    if (failed == 1) {
        PyErr_SetString(PyExc_ValueError, "push(): the ring is full");
        return NULL;
    }
    if (failed == 2)
        return PyErr_NoMemory();
    return PyLong_FromUnsignedLongLong(consumed);
}

/* clear() -> (consumed, frames removed): the unplayed frames gone, atomically with the count
 * of those that were sent (barge-in's truncation point). */
static PyObject *stream_clear(StreamObject *h, PyObject *unused) {
    (void)unused;
    Stream *s = live(h);
    if (s == NULL)
        return NULL;
    st_lock(h->engine);
    uint32_t removed = s->count;
    s->count = 0;
    st_ring_release(s);
    uint64_t consumed = s->consumed;
    st_unlock(h->engine);
    return Py_BuildValue("(KI)", (unsigned long long)consumed, removed);
}

/* take() -> (consumed, bytes): clear(), returning the unplayed frames. */
static PyObject *stream_take(StreamObject *h, PyObject *unused) {
    (void)unused;
    Stream *s = live(h);
    if (s == NULL)
        return NULL;
    EngineObject *e = h->engine;
    st_lock(e);
    size_t size = (size_t)s->count * s->frame_bytes;
    uint8_t *copy = malloc(size ? size : 1);
    if (copy == NULL) {
        st_unlock(e);
        return PyErr_NoMemory();
    }
    for (uint32_t i = 0; i < s->count; i++)
        memcpy(copy + (size_t)i * s->frame_bytes,
               s->ring + (size_t)((s->head + i) % s->ring_capacity) * s->frame_bytes,
               s->frame_bytes);
    s->count = 0;
    st_ring_release(s);
    uint64_t consumed = s->consumed;
    st_unlock(e);
    PyObject *result = Py_BuildValue("(Ky#)", (unsigned long long)consumed, copy,
                                     (Py_ssize_t)size);
    free(copy);
    return result;
}

static PyObject *stream_get_consumed(StreamObject *h, void *c) {
    (void)c;
    Stream *s = live(h);
    if (s == NULL)
        return NULL;
    st_lock(h->engine);
    uint64_t consumed = s->consumed;
    st_unlock(h->engine);
    return PyLong_FromUnsignedLongLong(consumed);
}

/* set_remote(sockaddr or None): where the frames go from the next one on (a latch, a
 * re-offer's new address; None: nowhere, the stream still moves on). */
static PyObject *stream_set_remote(StreamObject *h, PyObject *remote) {
    Stream *s = live(h);
    if (s == NULL)
        return NULL;
    if (remote != Py_None && (!PyBytes_Check(remote) ||
                              (size_t)PyBytes_GET_SIZE(remote) > sizeof(struct sockaddr_storage))) {
        PyErr_SetString(PyExc_TypeError, "remote: bytes from pack_address() or None");
        return NULL;
    }
    st_lock(h->engine);
    if (remote == Py_None) {
        s->has_remote = 0;
    } else {
        s->has_remote = 1;
        s->remote_len = (socklen_t)PyBytes_GET_SIZE(remote);
        memcpy(&s->remote, PyBytes_AS_STRING(remote), s->remote_len);
    }
    st_unlock(h->engine);
    Py_RETURN_NONE;
}

static PyObject *stream_set_sending(StreamObject *h, PyObject *arg) {
    Stream *s = live(h);
    if (s == NULL)
        return NULL;
    int sending = PyObject_IsTrue(arg);
    if (sending < 0)
        return NULL;
    st_lock(h->engine);
    s->sending = (uint8_t)sending;
    st_unlock(h->engine);
    Py_RETURN_NONE;
}

/* media_started(): the caller's first packet latched (PacedSender.caller_media_started). */
static PyObject *stream_media_started(StreamObject *h, PyObject *unused) {
    (void)unused;
    Stream *s = live(h);
    if (s == NULL)
        return NULL;
    st_lock(h->engine);
    s->idle_sends_silence = s->send_silence;
    int failed = st_wake(h->engine, s);
    st_unlock(h->engine);
    if (failed)
        return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* counters(report=False) -> (packets, bytes, send_errors, reanchors, sent_since_report,
 * sequence, timestamp, anchored, first_errno); report=True also resets sent_since_report, as
 * an RTCP report that reads it does. */
static PyObject *stream_counters(StreamObject *h, PyObject *args) {
    int report = 0;
    if (!PyArg_ParseTuple(args, "|p:counters", &report))
        return NULL;
    Stream *s = live(h);
    if (s == NULL)
        return NULL;
    st_lock(h->engine);
    Stream copy = *s;
    if (report)
        s->sent_since_report = 0;
    st_unlock(h->engine);
    return Py_BuildValue("(KKKKiIkii)", (unsigned long long)copy.packets,
                         (unsigned long long)copy.bytes, (unsigned long long)copy.send_errors,
                         (unsigned long long)copy.reanchors, copy.sent_since_report,
                         (unsigned int)copy.sequence, (unsigned long)copy.timestamp,
                         copy.anchored, copy.first_errno);
}


/* unregister() -> the stream's last state, for a Python sender that takes over (a recording
 * started, an address only sendto can reach) and for the final counters:
 * (sequence, timestamp, marker_pending, talking, anchored, next_deadline, scheduled,
 *  consumed, unplayed frames (bytes), packets, bytes, send_errors, reanchors,
 *  sent_since_report). Once it returns nothing is sent on the stream's descriptor again,
 * and that descriptor (our dup) is closed. */
static PyObject *stream_unregister(StreamObject *h, PyObject *unused) {
    (void)unused;
    Stream *s = live(h);
    if (s == NULL)
        return NULL;
    EngineObject *e = h->engine;
    int scheduled;
    size_t size;
    uint8_t *unplayed;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&e->lock);
    scheduled = s->heap_index >= 0;
    st_detach(e, s);
    pthread_mutex_unlock(&e->lock);
    Py_END_ALLOW_THREADS
    h->stream = NULL;
    size = (size_t)s->count * s->frame_bytes;
    unplayed = malloc(size ? size : 1);
    if (unplayed != NULL)
        for (uint32_t i = 0; i < s->count; i++)
            memcpy(unplayed + (size_t)i * s->frame_bytes,
                   s->ring + (size_t)((s->head + i) % s->ring_capacity) * s->frame_bytes,
                   s->frame_bytes);
    Stream copy = *s;
    st_stream_free(s);
    if (unplayed == NULL)
        return PyErr_NoMemory();
    PyObject *result = Py_BuildValue(
        "(Ikiiidi Ky# KKKKi)", (unsigned int)copy.sequence, (unsigned long)copy.timestamp,
        copy.marker_pending, copy.talking, copy.anchored, copy.next_deadline, scheduled,
        (unsigned long long)copy.consumed, unplayed, (Py_ssize_t)size,
        (unsigned long long)copy.packets, (unsigned long long)copy.bytes,
        (unsigned long long)copy.send_errors, (unsigned long long)copy.reanchors,
        copy.sent_since_report);
    free(unplayed);
    return result;
}

static void stream_dealloc(StreamObject *h) {
    if (h->stream != NULL) { /* never unregistered: do it now */
        EngineObject *e = h->engine;
        Stream *s = h->stream;
        Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(&e->lock);
        st_detach(e, s);
        pthread_mutex_unlock(&e->lock);
        Py_END_ALLOW_THREADS
        st_stream_free(s);
    }
    Py_XDECREF(h->engine);
    PyObject_Free(h);
}

static PyObject *stream_get_id(StreamObject *h, void *c) {
    (void)c;
    Stream *s = live(h);
    return s == NULL ? NULL : PyLong_FromUnsignedLongLong(s->id);
}

static PyObject *stream_get_queued(StreamObject *h, void *c) {
    (void)c;
    Stream *s = live(h);
    if (s == NULL)
        return NULL;
    st_lock(h->engine);
    uint32_t count = s->count;
    st_unlock(h->engine);
    return PyLong_FromUnsignedLong(count);
}

static PyMethodDef stream_methods[] = {
    {"push", (PyCFunction)stream_push, METH_O, "Whole frames to play: returns consumed."},
    {"clear", (PyCFunction)stream_clear, METH_NOARGS, "(consumed, frames removed)."},
    {"take", (PyCFunction)stream_take, METH_NOARGS, "(consumed, the unplayed frames)."},
    {"set_remote", (PyCFunction)stream_set_remote, METH_O, "Where frames go (or None)."},
    {"set_sending", (PyCFunction)stream_set_sending, METH_O, "False: on hold."},
    {"media_started", (PyCFunction)stream_media_started, METH_NOARGS,
     "The caller's media flows: idle silence from now on (if send_silence)."},
    {"counters", (PyCFunction)stream_counters, METH_VARARGS, "The stream's counters."},
    {"unregister", (PyCFunction)stream_unregister, METH_NOARGS,
     "Never send again: returns the last state."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef stream_getset[] = {
    {"id", (getter)stream_get_id, NULL, "The id its events carry.", NULL},
    {"consumed", (getter)stream_get_consumed, NULL, "Frames taken to be sent, ever.", NULL},
    {"queued", (getter)stream_get_queued, NULL, "Frames in the ring.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject SendStreamType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "media._fast.SendStream",
    .tp_doc = "One call's stream on a SendEngine (SendEngine.register's).",
    .tp_basicsize = sizeof(StreamObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)stream_dealloc,
    .tp_methods = stream_methods,
    .tp_getset = stream_getset,
};
