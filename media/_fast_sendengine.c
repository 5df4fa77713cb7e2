/* media._fast, part 5: SendEngine, the media send thread as Python holds it (the overview is
 * in _fast_sendthread.c). */
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

/* --- SendEngine --------------------------------------------------------------------------- */

static int engine_init(EngineObject *e, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"offset", "manual", NULL};
    double offset;
    int manual = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "d|p:SendEngine", keywords, &offset,
                                     &manual))
        return -1;
    if (e->batch != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "SendEngine is initialised once");
        return -1;
    }
    e->offset = offset;
    e->manual = manual;
    e->armed = INFINITY;
    e->timer_fd = e->wake_fd = e->event_fd = -1;
    e->batch = malloc(BATCH_CAPACITY * sizeof *e->batch);
    if (e->batch == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    pthread_condattr_t attributes;
    pthread_condattr_init(&attributes);
    pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC);
    if (pthread_mutex_init(&e->lock, NULL) || pthread_cond_init(&e->idle, &attributes)) {
        pthread_condattr_destroy(&attributes);
        PyErr_SetString(PyExc_OSError, "pthread init failed");
        return -1;
    }
    pthread_condattr_destroy(&attributes);
    e->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    e->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    e->event_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (e->timer_fd < 0 || e->wake_fd < 0 || e->event_fd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return 0;
}



static void engine_stop_thread(EngineObject *e) {
    if (!e->started)
        return;
    pthread_mutex_lock(&e->lock);
    e->stopping = 1;
    pthread_mutex_unlock(&e->lock);
    uint64_t one = 1;
    (void)!write(e->wake_fd, &one, sizeof one);
    Py_BEGIN_ALLOW_THREADS
    pthread_join(e->thread, NULL);
    Py_END_ALLOW_THREADS
    e->started = 0;
}

static void engine_dealloc(EngineObject *e) {
    if (e->batch != NULL) { /* initialised: the streams hold references, so none is left */
        engine_stop_thread(e);
        while (e->streams != NULL) {
            Stream *s = e->streams;
            e->streams = s->next;
            st_stream_free(s);
        }
        free(e->heap);
        free(e->batch);
        st_close_fd(&e->timer_fd);
        st_close_fd(&e->wake_fd);
        st_close_fd(&e->event_fd);
        pthread_mutex_destroy(&e->lock);
        pthread_cond_destroy(&e->idle);
    }
    Py_TYPE(e)->tp_free((PyObject *)e);
}

static PyObject *engine_start(EngineObject *e, PyObject *unused) {
    (void)unused;
    if (e->manual || e->started || e->stopping) {
        PyErr_SetString(PyExc_RuntimeError, "start(): manual, started or stopped already");
        return NULL;
    }
    /* The thread takes no signal: Python's handlers run in the main thread. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int error = pthread_create(&e->thread, NULL, st_thread_main, e);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (error) {
        errno = error;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    e->started = 1;
    Py_RETURN_NONE;
}

static PyObject *engine_stop(EngineObject *e, PyObject *unused) {
    (void)unused;
    engine_stop_thread(e);
    e->stopping = 1;
    Py_RETURN_NONE;
}

/* drain() -> (events, lateness, events_lost): events as (kind, stream id, trio time), the
 * wake-ups' lateness in seconds; clears the eventfd. */
static PyObject *engine_drain(EngineObject *e, PyObject *unused) {
    (void)unused;
    uint64_t value;
    if (!e->manual)
        (void)!read(e->event_fd, &value, sizeof value);
    st_lock(e);
    size_t events = e->event_count, late = e->lateness_count;
    for (size_t i = 0; i < events; i++)
        e->drained[i] = e->events[(e->event_head + i) % EVENT_CAPACITY];
    memcpy(e->drained_lateness, e->lateness, late * sizeof(double));
    e->event_head = (e->event_head + events) % EVENT_CAPACITY;
    e->event_count = 0;
    e->lateness_count = 0;
    e->event_signaled = 0;
    uint64_t lost = e->events_lost;
    st_unlock(e);
    PyObject *list = PyList_New((Py_ssize_t)events);
    PyObject *lateness = PyList_New((Py_ssize_t)late);
    if (list == NULL || lateness == NULL)
        goto fail;
    for (size_t i = 0; i < events; i++) {
        Event *ev = &e->drained[i];
        PyObject *item = Py_BuildValue("(iKd)", ev->kind, (unsigned long long)ev->stream_id,
                                       ev->at);
        if (item == NULL)
            goto fail;
        PyList_SET_ITEM(list, (Py_ssize_t)i, item);
    }
    for (size_t i = 0; i < late; i++) {
        PyObject *item = PyFloat_FromDouble(e->drained_lateness[i]);
        if (item == NULL)
            goto fail;
        PyList_SET_ITEM(lateness, (Py_ssize_t)i, item);
    }
    return Py_BuildValue("(NNK)", list, lateness, (unsigned long long)lost);
fail:
    Py_XDECREF(list);
    Py_XDECREF(lateness);
    return NULL;
}

static PyObject *engine_set_now(EngineObject *e, PyObject *arg) {
    double now = PyFloat_AsDouble(arg);
    if (now == -1.0 && PyErr_Occurred())
        return NULL;
    if (!e->manual) {
        PyErr_SetString(PyExc_RuntimeError, "set_now(): a manual engine's");
        return NULL;
    }
    e->manual_now = now;
    Py_RETURN_NONE;
}

/* run_due(): a manual engine's wake-up at its `now` (MediaClock.tick_due and the lateness). */
static PyObject *engine_run_due(EngineObject *e, PyObject *unused) {
    (void)unused;
    if (!e->manual) {
        PyErr_SetString(PyExc_RuntimeError, "run_due(): a manual engine's");
        return NULL;
    }
    pthread_mutex_lock(&e->lock);
    size_t handled = st_wake_up(e, e->manual_now);
    pthread_mutex_unlock(&e->lock);
    return PyLong_FromSize_t(handled);
}

static PyObject *engine_get_wake_at(EngineObject *e, void *c) {
    (void)c;
    st_lock(e);
    double at = e->heap_len ? (double)e->heap[0]->slot * TICK : INFINITY;
    st_unlock(e);
    return PyFloat_FromDouble(at);
}

static PyObject *engine_get_counter(EngineObject *e, void *c) {
    st_lock(e);
    uint64_t value = *(uint64_t *)((char *)e + (size_t)c);
    st_unlock(e);
    return PyLong_FromUnsignedLongLong(value);
}

static PyObject *engine_get_streams(EngineObject *e, void *c) {
    (void)c;
    return PyLong_FromSize_t(e->stream_count);
}

static PyObject *engine_get_event_fd(EngineObject *e, void *c) {
    (void)c;
    return PyLong_FromLong(e->event_fd);
}

/* register(fd, payload_type, ssrc, sequence, timestamp, marker_pending, ptime_ms,
 *          silence_byte, ring_max_frames, send_silence, idle_sends_silence, sending, remote)
 * -> SendStream. remote: a pack_address() sockaddr or None. */
static PyObject *engine_register(EngineObject *e, PyObject *args) {
    int fd, payload_type, marker, ptime_ms, silence_byte, send_silence, idle, sending;
    unsigned long ssrc, timestamp;
    unsigned int sequence, ring_max;
    PyObject *remote;
    if (!PyArg_ParseTuple(args, "iikIkpiiIpppO:register", &fd, &payload_type, &ssrc,
                          &sequence, &timestamp, &marker, &ptime_ms, &silence_byte, &ring_max,
                          &send_silence, &idle, &sending, &remote))
        return NULL;
    if (ptime_ms <= 0 || ptime_ms * 8 > MAX_FRAME || payload_type < 0 || payload_type > 0x7F ||
        silence_byte < 0 || silence_byte > 255 || sequence > 0xFFFF || ssrc > 0xFFFFFFFFul ||
        timestamp > 0xFFFFFFFFul || ring_max == 0) {
        PyErr_SetString(PyExc_ValueError, "register(): a value out of range");
        return NULL;
    }
    if (remote != Py_None && (!PyBytes_Check(remote) ||
                              (size_t)PyBytes_GET_SIZE(remote) > sizeof(struct sockaddr_storage))) {
        PyErr_SetString(PyExc_TypeError, "remote: bytes from pack_address() or None");
        return NULL;
    }
    if (e->stopping) {
        PyErr_SetString(PyExc_RuntimeError, "register(): the engine has stopped");
        return NULL;
    }
    StreamObject *handle = PyObject_New(StreamObject, &SendStreamType);
    if (handle == NULL)
        return NULL;
    handle->stream = NULL;
    Py_INCREF(e);
    handle->engine = e;
    Stream *s = calloc(1, sizeof *s);
    if (s == NULL) {
        Py_DECREF(handle);
        return PyErr_NoMemory();
    }
    s->frame_bytes = (uint32_t)ptime_ms * 8;
    s->ring_max = ring_max; /* the ring itself comes with the first audio */
    /* Our own descriptor: closing the call's socket cannot leave a number that a new call's
     * socket reuses while this stream still sends on it. */
    s->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (s->fd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        free(s);
        Py_DECREF(handle);
        return NULL;
    }
    s->payload_type = (uint8_t)payload_type;
    s->ssrc = (uint32_t)ssrc;
    s->sequence = (uint16_t)sequence;
    s->timestamp = (uint32_t)timestamp;
    s->marker_pending = (uint8_t)marker;
    s->samples = (uint32_t)ptime_ms * 8; /* 8000 Hz */
    s->silence_byte = (uint8_t)silence_byte;
    s->send_silence = (uint8_t)send_silence;
    s->idle_sends_silence = (uint8_t)idle;
    s->sending = (uint8_t)sending;
    s->ptime = ptime_ms / 1000.0; /* bridge.ptime_ms / 1000, as the Python */
    s->max_lag = 3 * s->ptime;    /* Pacer's default */
    s->heap_index = -1;
    if (remote != Py_None) {
        s->has_remote = 1;
        s->remote_len = (socklen_t)PyBytes_GET_SIZE(remote);
        memcpy(&s->remote, PyBytes_AS_STRING(remote), s->remote_len);
    }
    st_lock(e);
    s->id = ++e->next_id;
    s->next = e->streams;
    if (e->streams)
        e->streams->prev = s;
    e->streams = s;
    e->stream_count++;
    int failed = st_wake(e, s);
    st_unlock(e);
    handle->stream = s;
    if (failed) {
        Py_DECREF(handle); /* unregisters it */
        return PyErr_NoMemory();
    }
    return (PyObject *)handle;
}

static PyMethodDef engine_methods[] = {
    {"start", (PyCFunction)engine_start, METH_NOARGS, "Start the send thread."},
    {"stop", (PyCFunction)engine_stop, METH_NOARGS, "Stop the send thread and join it."},
    {"drain", (PyCFunction)engine_drain, METH_NOARGS,
     "(events, lateness, events_lost) since the last drain."},
    {"register", (PyCFunction)engine_register, METH_VARARGS, "A call's stream: SendStream."},
    {"set_now", (PyCFunction)engine_set_now, METH_O, "A manual engine's time (trio's)."},
    {"run_due", (PyCFunction)engine_run_due, METH_NOARGS,
     "A manual engine's wake-up at its now: returns the frames handled."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef engine_getset[] = {
    {"wake_at", (getter)engine_get_wake_at, NULL, "The earliest slot's lattice point.", NULL},
    {"event_fd", (getter)engine_get_event_fd, NULL, "Readable when drain() has news.", NULL},
    {"streams", (getter)engine_get_streams, NULL, "Streams registered.", NULL},
    {"wakeups", (getter)engine_get_counter, NULL, "Wake-ups.",
     (void *)offsetof(EngineObject, wakeups)},
    {"ticks", (getter)engine_get_counter, NULL, "Frames handled.",
     (void *)offsetof(EngineObject, ticks)},
    {"lateness_lost", (getter)engine_get_counter, NULL, "Lateness samples not kept.",
     (void *)offsetof(EngineObject, lateness_lost)},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject SendEngineType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "media._fast.SendEngine",
    .tp_doc = "The media send thread: every registered call's paced RTP, without the GIL.",
    .tp_basicsize = sizeof(EngineObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)engine_init,
    .tp_dealloc = (destructor)engine_dealloc,
    .tp_methods = engine_methods,
    .tp_getset = engine_getset,
};
