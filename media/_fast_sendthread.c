/* media._fast, part 4: the media send thread (issue 14, candidate (c): the send side).
 *
 * One pthread per engine owns every registered call's send grid and sends every frame itself:
 * no Python, no GIL, no trio wake-up per frame. media/send_thread.py is its Python side and
 * media/sender.py (PacedSender.tick) + media/clock.py are the reference it follows byte for
 * byte: the same pacer arithmetic (in doubles, the same operations as Python's floats), the
 * same 1 ms lattice and coalescing, the same packetizer. tests/test_send_thread.py holds the
 * two to that.
 *
 *   SendEngine(offset, manual=False)    times are trio's: CLOCK_MONOTONIC + offset (trio's
 *                                       SystemClock is perf_counter() + offset, and Linux's
 *                                       perf_counter is CLOCK_MONOTONIC). manual: no thread,
 *                                       the tests step it (set_now, run_due).
 *   .start() / .stop()                  the thread; stop() wakes it (eventfd) and joins it
 *   .register(fd, ...) -> SendStream    a call's stream; fd is dup()ed: the stream's own
 *   .event_fd, .drain()                 events for the Python side (below)
 *   SendStream.push/clear/take/...      the playout ring (media/playout.py's ring mode)
 *   SendStream.unregister() -> state    never sent on again once it returns
 *
 * Locking. One mutex per engine guards every stream and the engine's schedule. The thread
 * holds it to compute a wake-up's frames (pop from the rings, build headers, advance the
 * grids) into a batch, and RELEASES it for the sendmsg() calls, so that the Python side,
 * which takes it with the GIL held, waits for microseconds of arithmetic, never for syscalls.
 * A stream being unregistered waits for the batch in flight (``in_send_phase``) before its
 * descriptor is closed: that is what makes "never sent on again" hold, and a dup()ed fd can
 * never be reused by another call's socket while a datagram for it is still queued here.
 * Python-side calls take the mutex with the GIL released when it is contended.
 *
 * Events (talkspurt started, playout ran dry) go to a bounded ring (EVENT_CAPACITY; overflow
 * counted, never blocking) and an eventfd that one trio task waits on; the pacing lateness of
 * each wake-up goes to a second bounded ring, drained with them. The thread never calls into
 * Python: everything it shares with Python is plain C under the mutex.
 */
#include "_fast.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

/* media/clock.py's TICK and COALESCE: the lattice every grid is anchored on. */
#define TICK 0.001
#define COALESCE (TICK / 2)
/* The largest frame: 40 ms of G.711 is 320 bytes (media/sdp_answer.py's SUPPORTED_PTIMES);
 * 240 ms leaves room and keeps a batch entry small. register() refuses more (ValueError: the
 * call keeps the Python sender). */
#define MAX_FRAME 1920
/* Frames sent per send phase: the mutex is released for each batch of this many sendmsg(). */
#define BATCH_CAPACITY 128
/* Events between two drains: a talkspurt's start and end per call, i.e. ~1 a second per call;
 * the drain runs within a millisecond or so of the eventfd. A full ring loses events, counted
 * (``events_lost``): the Python side's only effect is a late first_rtp mark, a missing
 * latency sample or a ran-dry signal (hang-up after goodbye then waits for the next one). */
#define EVENT_CAPACITY 8192
#define LATENESS_CAPACITY 2048
/* Each ring starts with this many frames and doubles up to the playout queue's max_bytes. */
#define RING_INITIAL 64
/* slot_counts: how many streams wait in each lattice slot, by slot modulo this; a collision
 * only arms the timer half a millisecond late (within COALESCE, as any frame may go). */
#define SLOT_COUNT_SIZE 4096

enum { EVENT_TALKSPURT = 1, EVENT_RAN_DRY = 2 };

typedef struct {
    uint64_t stream_id;
    double at;
    int kind;
} Event;

typedef struct Stream {
    uint64_t id;
    int fd; /* our dup() of the call's RTP socket; -1 once closed */
    /* the packetizer (media/rtp.py) */
    uint32_t ssrc, timestamp, samples, frame_bytes;
    uint16_t sequence;
    uint8_t payload_type, marker_pending, silence_byte;
    /* the sender (media/sender.py) */
    uint8_t sending, talking, send_silence, idle_sends_silence, has_remote;
    struct sockaddr_storage remote;
    socklen_t remote_len;
    /* the pacer (media/playout.py's Pacer) */
    uint8_t anchored;
    double ptime, max_lag, next_deadline;
    /* the clock entry: heap position, -1 while parked */
    long heap_index;
    int64_t slot;
    uint64_t order;
    /* the ring of whole frames the Python side pushed */
    uint8_t *ring;
    uint32_t ring_capacity, ring_max, head, count;
    uint64_t consumed; /* frames taken from the ring to be sent, ever */
    /* counters, synced into MediaStats by the Python side */
    uint64_t packets, bytes, send_errors, reanchors;
    uint8_t sent_since_report;
    int first_errno; /* the first send error, for one debug line */
    struct Stream *prev, *next; /* every registered stream */
} Stream;

typedef struct {
    Stream *stream;
    int fd;
    socklen_t name_len;
    struct sockaddr_storage name;
    uint32_t size;
    int error;
    uint8_t data[RTP_HEADER_SIZE + MAX_FRAME];
} Outgoing;

typedef struct {
    PyObject_HEAD
    pthread_mutex_t lock;
    pthread_cond_t idle; /* a send phase ended */
    pthread_t thread;
    int started, stopping, manual, in_send_phase, event_signaled;
    double offset, manual_now, armed;
    int timer_fd, wake_fd, event_fd;
    Stream **heap;
    size_t heap_len, heap_capacity;
    uint32_t slot_counts[SLOT_COUNT_SIZE];
    uint64_t order, next_id, wakeups, ticks, events_lost, lateness_lost;
    Stream *streams;
    size_t stream_count;
    Event events[EVENT_CAPACITY];
    size_t event_head, event_count;
    double lateness[LATENESS_CAPACITY];
    size_t lateness_count;
    Outgoing *batch;
    size_t batch_len;
    /* the drain's scratch copies (only the trio thread drains) */
    Event drained[EVENT_CAPACITY];
    double drained_lateness[LATENESS_CAPACITY];
} EngineObject;

typedef struct {
    PyObject_HEAD
    EngineObject *engine;
    Stream *stream; /* NULL once unregistered */
} StreamObject;

extern PyTypeObject SendEngineType, SendStreamType;

/* --- time and the lattice (media/clock.py) ----------------------------------------------- */

static double engine_now(EngineObject *e) {
    if (e->manual)
        return e->manual_now;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9 + e->offset;
}

static double align(double at) { return ceil(at / TICK - 1e-6) * TICK; }          /* align */
static int64_t slot_of(double at) { return (int64_t)ceil(at / TICK - 0.5); }      /* slot_of */

/* --- the schedule: a binary heap of streams by (slot, order), media/clock.py's wheel ------- */

static int heap_less(Stream *a, Stream *b) {
    return a->slot < b->slot || (a->slot == b->slot && a->order < b->order);
}

static void heap_set(EngineObject *e, size_t i, Stream *s) {
    e->heap[i] = s;
    s->heap_index = (long)i;
}

static void heap_up(EngineObject *e, size_t i) {
    Stream *s = e->heap[i];
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!heap_less(s, e->heap[parent]))
            break;
        heap_set(e, i, e->heap[parent]);
        i = parent;
    }
    heap_set(e, i, s);
}

static void heap_down(EngineObject *e, size_t i) {
    Stream *s = e->heap[i];
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= e->heap_len)
            break;
        if (child + 1 < e->heap_len && heap_less(e->heap[child + 1], e->heap[child]))
            child++;
        if (!heap_less(e->heap[child], s))
            break;
        heap_set(e, i, e->heap[child]);
        i = child;
    }
    heap_set(e, i, s);
}

static void heap_remove(EngineObject *e, Stream *s) {
    if (s->heap_index < 0)
        return;
    size_t i = (size_t)s->heap_index;
    e->slot_counts[(uint64_t)s->slot % SLOT_COUNT_SIZE]--;
    s->heap_index = -1;
    Stream *last = e->heap[--e->heap_len];
    if (last != s) {
        heap_set(e, i, last);
        heap_up(e, i);
        heap_down(e, (size_t)last->heap_index);
    }
}

/* The timer for lattice point `at` (trio time; INFINITY disarms), half a millisecond late when
 * the next slot is taken too, so that one wake-up serves both: MediaClock._arm. */
static void arm(EngineObject *e, double at) {
    e->armed = at;
    if (e->manual)
        return;
    struct itimerspec spec;
    memset(&spec, 0, sizeof spec);
    if (!isinf(at)) {
        int64_t slot = slot_of(at);
        double slack = e->slot_counts[(uint64_t)(slot + 1) % SLOT_COUNT_SIZE] ? COALESCE : 0.0;
        double mono = at + slack - e->offset;
        if (mono < 1e-9)
            mono = 1e-9; /* zero would disarm it */
        spec.it_value.tv_sec = (time_t)mono;
        spec.it_value.tv_nsec = (long)((mono - (double)spec.it_value.tv_sec) * 1e9);
        if (spec.it_value.tv_nsec > 999999999L)
            spec.it_value.tv_nsec = 999999999L;
        if (spec.it_value.tv_sec == 0 && spec.it_value.tv_nsec == 0)
            spec.it_value.tv_nsec = 1;
    }
    timerfd_settime(e->timer_fd, TFD_TIMER_ABSTIME, &spec, NULL);
}

/* MediaClock.schedule: tick `s` at `at` (it is parked). */
static int schedule(EngineObject *e, Stream *s, double at) {
    if (e->heap_len == e->heap_capacity) {
        size_t capacity = e->heap_capacity ? e->heap_capacity * 2 : 64;
        Stream **grown = realloc(e->heap, capacity * sizeof *grown);
        if (grown == NULL)
            return -1;
        e->heap = grown;
        e->heap_capacity = capacity;
    }
    s->slot = slot_of(at);
    s->order = e->order++;
    e->slot_counts[(uint64_t)s->slot % SLOT_COUNT_SIZE]++;
    e->heap[e->heap_len] = s;
    s->heap_index = (long)e->heap_len++;
    heap_up(e, (size_t)s->heap_index);
    if ((double)s->slot * TICK < e->armed)
        arm(e, (double)s->slot * TICK); /* wake up earlier than planned */
    return 0;
}

/* PacedSender.wake: unpark if there is a frame to send. */
static int wake(EngineObject *e, Stream *s) {
    if (s->heap_index >= 0 || s->fd < 0)
        return 0;
    if (!s->idle_sends_silence && s->count == 0)
        return 0;
    double now = engine_now(e);
    if (!s->anchored) {
        s->anchored = 1;
        s->next_deadline = align(now);
    } else {
        /* Pacer.skip_to: the slots parked through still advance the timestamp. */
        double behind = now - s->next_deadline;
        if (behind > 0) {
            double skipped = ceil(behind / s->ptime - 1e-9);
            s->next_deadline += skipped * s->ptime;
            if (skipped > 0) {
                s->timestamp += (uint32_t)((uint64_t)skipped * s->samples);
                s->marker_pending = 1;
            }
        }
    }
    return schedule(e, s, s->next_deadline);
}

/* --- one wake-up's work ------------------------------------------------------------------ */

static void signal_events(EngineObject *e) {
    if (e->event_signaled)
        return;
    uint64_t one = 1;
    if (e->manual || write(e->event_fd, &one, sizeof one) == (ssize_t)sizeof one)
        e->event_signaled = 1;
}

static void post(EngineObject *e, int kind, Stream *s, double at) {
    if (e->event_count == EVENT_CAPACITY) {
        e->events_lost++;
        return;
    }
    Event *ev = &e->events[(e->event_head + e->event_count++) % EVENT_CAPACITY];
    ev->kind = kind;
    ev->stream_id = s->id;
    ev->at = at;
}

/* The sendmsg() calls of the batch, with the mutex released; then the outcomes counted. */
static void send_phase(EngineObject *e) {
    if (e->batch_len == 0)
        return;
    e->in_send_phase = 1;
    pthread_mutex_unlock(&e->lock);
    for (size_t i = 0; i < e->batch_len; i++) {
        Outgoing *out = &e->batch[i];
        struct iovec part = {out->data, out->size};
        struct msghdr message;
        memset(&message, 0, sizeof message);
        message.msg_name = &out->name;
        message.msg_namelen = out->name_len;
        message.msg_iov = &part;
        message.msg_iovlen = 1;
        ssize_t sent;
        do {
            sent = sendmsg(out->fd, &message, MSG_DONTWAIT);
        } while (sent < 0 && errno == EINTR);
        out->error = sent < 0 ? errno : 0;
    }
    pthread_mutex_lock(&e->lock);
    for (size_t i = 0; i < e->batch_len; i++) {
        Outgoing *out = &e->batch[i];
        Stream *s = out->stream; /* still allocated: unregister waits for this phase */
        if (out->error) {
            if (!s->send_errors)
                s->first_errno = out->error;
            s->send_errors++;
        } else {
            s->sent_since_report = 1;
            s->packets++;
            s->bytes += out->size;
        }
    }
    e->batch_len = 0;
    e->in_send_phase = 0;
    pthread_cond_broadcast(&e->idle);
}

/* PacedSender._send_frame: the next packet (payload NULL: silence); the stream moves on
 * whether or not it goes anywhere. */
static void send_frame(EngineObject *e, Stream *s, const uint8_t *payload) {
    uint16_t seq = s->sequence;
    uint32_t ts = s->timestamp;
    uint8_t marker = s->marker_pending;
    s->marker_pending = 0;
    s->sequence = (uint16_t)(seq + 1);
    s->timestamp = ts + s->samples;
    if (!s->has_remote || !s->sending)
        return;
    if (e->batch_len == BATCH_CAPACITY)
        send_phase(e);
    Outgoing *out = &e->batch[e->batch_len++];
    uint8_t *p = out->data;
    p[0] = 0x80;
    p[1] = (uint8_t)((marker ? 0x80 : 0) | s->payload_type);
    p[2] = (uint8_t)(seq >> 8);
    p[3] = (uint8_t)seq;
    p[4] = (uint8_t)(ts >> 24);
    p[5] = (uint8_t)(ts >> 16);
    p[6] = (uint8_t)(ts >> 8);
    p[7] = (uint8_t)ts;
    p[8] = (uint8_t)(s->ssrc >> 24);
    p[9] = (uint8_t)(s->ssrc >> 16);
    p[10] = (uint8_t)(s->ssrc >> 8);
    p[11] = (uint8_t)s->ssrc;
    if (payload != NULL)
        memcpy(p + RTP_HEADER_SIZE, payload, s->frame_bytes);
    else
        memset(p + RTP_HEADER_SIZE, s->silence_byte, s->frame_bytes);
    out->size = RTP_HEADER_SIZE + s->frame_bytes;
    out->stream = s;
    out->fd = s->fd;
    out->name = s->remote;
    out->name_len = s->remote_len;
    out->error = 0;
}

/* PacedSender.tick: the frame due now, then the next deadline (or parked). A frame popped
 * from the ring is copied into the batch before the mutex is released, so the ring may be
 * refilled or cleared meanwhile. */
static void tick(EngineObject *e, Stream *s, double now) {
    int park = 0;
    if (s->count) {
        const uint8_t *frame = s->ring + (size_t)s->head * s->frame_bytes;
        s->head = (s->head + 1) % s->ring_capacity;
        s->count--;
        s->consumed++;
        if (!s->talking) {
            s->marker_pending = 1; /* RFC 3551 4.1: marker on a talkspurt's start */
            s->talking = 1;
            post(e, EVENT_TALKSPURT, s, now);
        }
        send_frame(e, s, frame);
    } else {
        if (s->talking) {
            s->talking = 0;
            post(e, EVENT_RAN_DRY, s, now);
        }
        if (s->idle_sends_silence) {
            send_frame(e, s, NULL);
        } else {
            s->timestamp += s->samples; /* the timestamp still advances */
            s->marker_pending = 1;
            park = 1;
        }
    }
    /* Pacer.advance */
    if (now - s->next_deadline > s->max_lag) {
        s->reanchors++;
        s->next_deadline = now + s->ptime;
    } else {
        s->next_deadline += s->ptime;
    }
    if (!park)
        schedule(e, s, s->next_deadline); /* may be due again in this same wake-up */
}

/* MediaClock.tick_due: tick every stream due by `now`, coalesced. */
static size_t tick_due(EngineObject *e, double now) {
    int64_t last = (int64_t)floor((now + COALESCE) / TICK + 1e-6);
    size_t handled = 0;
    while (e->heap_len && e->heap[0]->slot <= last) {
        Stream *s = e->heap[0];
        heap_remove(e, s);
        handled++;
        tick(e, s, now);
    }
    send_phase(e);
    e->ticks += handled;
    return handled;
}

/* One wake-up: the lateness figure (MediaClock.run's), the ticks, the events signalled. */
static size_t wake_up(EngineObject *e, double now) {
    e->wakeups++;
    if (e->heap_len) {
        double late = now - (double)e->heap[0]->slot * TICK;
        if (e->lateness_count < LATENESS_CAPACITY)
            e->lateness[e->lateness_count++] = late > 0 ? late : 0.0;
        else
            e->lateness_lost++;
    }
    size_t handled = tick_due(e, now);
    if (e->event_count || e->lateness_count >= LATENESS_CAPACITY / 2)
        signal_events(e);
    return handled;
}

static void *thread_main(void *arg) {
    EngineObject *e = arg;
    pthread_mutex_lock(&e->lock);
    while (!e->stopping) {
        double at = e->heap_len ? (double)e->heap[0]->slot * TICK : INFINITY;
        if (at != e->armed)
            arm(e, at);
        pthread_mutex_unlock(&e->lock);
        struct pollfd fds[2] = {{e->timer_fd, POLLIN, 0}, {e->wake_fd, POLLIN, 0}};
        int ready = poll(fds, 2, -1);
        uint64_t count;
        if (ready > 0 && (fds[0].revents & POLLIN))
            (void)!read(e->timer_fd, &count, sizeof count);
        if (ready > 0 && (fds[1].revents & POLLIN))
            (void)!read(e->wake_fd, &count, sizeof count);
        pthread_mutex_lock(&e->lock);
        if (e->stopping)
            break;
        if (ready > 0 && (fds[0].revents & POLLIN)) {
            e->armed = INFINITY; /* one-shot: it fired */
            wake_up(e, engine_now(e));
        }
    }
    pthread_mutex_unlock(&e->lock);
    return NULL;
}

/* --- locking from Python ------------------------------------------------------------------ */

/* The mutex, taken with the GIL released when the thread holds it (it never takes the GIL,
 * so either order is deadlock-free; releasing lets other Python threads run meanwhile). */
static void lock_engine(EngineObject *e) {
    if (pthread_mutex_trylock(&e->lock) == 0)
        return;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&e->lock);
    Py_END_ALLOW_THREADS
}

static void unlock_engine(EngineObject *e) { pthread_mutex_unlock(&e->lock); }

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

static void close_fd(int *fd) {
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

static void stream_free(Stream *s) {
    close_fd(&s->fd);
    free(s->ring);
    free(s);
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
            stream_free(s);
        }
        free(e->heap);
        free(e->batch);
        close_fd(&e->timer_fd);
        close_fd(&e->wake_fd);
        close_fd(&e->event_fd);
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
    int error = pthread_create(&e->thread, NULL, thread_main, e);
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
    lock_engine(e);
    size_t events = e->event_count, late = e->lateness_count;
    for (size_t i = 0; i < events; i++)
        e->drained[i] = e->events[(e->event_head + i) % EVENT_CAPACITY];
    memcpy(e->drained_lateness, e->lateness, late * sizeof(double));
    e->event_head = (e->event_head + events) % EVENT_CAPACITY;
    e->event_count = 0;
    e->lateness_count = 0;
    e->event_signaled = 0;
    uint64_t lost = e->events_lost;
    unlock_engine(e);
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
    size_t handled = wake_up(e, e->manual_now);
    pthread_mutex_unlock(&e->lock);
    return PyLong_FromSize_t(handled);
}

static PyObject *engine_get_wake_at(EngineObject *e, void *c) {
    (void)c;
    lock_engine(e);
    double at = e->heap_len ? (double)e->heap[0]->slot * TICK : INFINITY;
    unlock_engine(e);
    return PyFloat_FromDouble(at);
}

static PyObject *engine_get_counter(EngineObject *e, void *c) {
    lock_engine(e);
    uint64_t value = *(uint64_t *)((char *)e + (size_t)c);
    unlock_engine(e);
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
    s->ring_capacity = ring_max < RING_INITIAL ? ring_max : RING_INITIAL;
    s->ring_max = ring_max;
    s->ring = malloc((size_t)s->ring_capacity * s->frame_bytes);
    /* Our own descriptor: closing the call's socket cannot leave a number that a new call's
     * socket reuses while this stream still sends on it. */
    s->fd = s->ring == NULL ? -1 : fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (s->fd < 0) {
        if (s->ring == NULL)
            PyErr_NoMemory();
        else
            PyErr_SetFromErrno(PyExc_OSError);
        free(s->ring);
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
    lock_engine(e);
    s->id = ++e->next_id;
    s->next = e->streams;
    if (e->streams)
        e->streams->prev = s;
    e->streams = s;
    e->stream_count++;
    int failed = wake(e, s);
    unlock_engine(e);
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

/* --- SendStream: one call's stream, as the Python side holds it ---------------------------- */

static Stream *live(StreamObject *h) {
    if (h->stream == NULL)
        PyErr_SetString(PyExc_ValueError, "the stream is unregistered");
    return h->stream;
}

/* Room for `extra` more frames: the ring doubles, up to ring_max (what the playout queue's
 * max_bytes holds); an empty ring that had grown goes back to its first size. */
static int ring_reserve(Stream *s, uint32_t extra) {
    uint32_t need = s->count + extra;
    uint32_t capacity = s->ring_capacity;
    if (s->count == 0 && capacity > RING_INITIAL && need <= RING_INITIAL)
        capacity = RING_INITIAL;
    else if (need <= capacity)
        return 0;
    while (capacity < need)
        capacity = capacity > s->ring_max / 2 ? s->ring_max : capacity * 2;
    uint8_t *ring = malloc((size_t)capacity * s->frame_bytes);
    if (ring == NULL)
        return -1;
    for (uint32_t i = 0; i < s->count; i++)
        memcpy(ring + (size_t)i * s->frame_bytes,
               s->ring + (size_t)((s->head + i) % s->ring_capacity) * s->frame_bytes,
               s->frame_bytes);
    free(s->ring);
    s->ring = ring;
    s->ring_capacity = capacity;
    s->head = 0;
    return 0;
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
    lock_engine(e);
    int failed = 0;
    if ((uint64_t)s->count + frames > s->ring_max) {
        failed = 1;
    } else if (frames) {
        if (ring_reserve(s, frames) < 0) {
            failed = 2;
        } else {
            const uint8_t *from = view.buf;
            for (uint32_t i = 0; i < frames; i++)
                memcpy(s->ring + (size_t)((s->head + s->count + i) % s->ring_capacity) *
                                     s->frame_bytes,
                       from + (size_t)i * s->frame_bytes, s->frame_bytes);
            s->count += frames;
            failed = wake(e, s) ? 2 : 0;
        }
    }
    uint64_t consumed = s->consumed;
    unlock_engine(e);
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
    lock_engine(h->engine);
    uint32_t removed = s->count;
    s->count = 0;
    s->head = 0;
    uint64_t consumed = s->consumed;
    unlock_engine(h->engine);
    return Py_BuildValue("(KI)", (unsigned long long)consumed, removed);
}

/* take() -> (consumed, bytes): clear(), returning the unplayed frames. */
static PyObject *stream_take(StreamObject *h, PyObject *unused) {
    (void)unused;
    Stream *s = live(h);
    if (s == NULL)
        return NULL;
    EngineObject *e = h->engine;
    lock_engine(e);
    size_t size = (size_t)s->count * s->frame_bytes;
    uint8_t *copy = malloc(size ? size : 1);
    if (copy == NULL) {
        unlock_engine(e);
        return PyErr_NoMemory();
    }
    for (uint32_t i = 0; i < s->count; i++)
        memcpy(copy + (size_t)i * s->frame_bytes,
               s->ring + (size_t)((s->head + i) % s->ring_capacity) * s->frame_bytes,
               s->frame_bytes);
    s->count = 0;
    s->head = 0;
    uint64_t consumed = s->consumed;
    unlock_engine(e);
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
    lock_engine(h->engine);
    uint64_t consumed = s->consumed;
    unlock_engine(h->engine);
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
    lock_engine(h->engine);
    if (remote == Py_None) {
        s->has_remote = 0;
    } else {
        s->has_remote = 1;
        s->remote_len = (socklen_t)PyBytes_GET_SIZE(remote);
        memcpy(&s->remote, PyBytes_AS_STRING(remote), s->remote_len);
    }
    unlock_engine(h->engine);
    Py_RETURN_NONE;
}

static PyObject *stream_set_sending(StreamObject *h, PyObject *arg) {
    Stream *s = live(h);
    if (s == NULL)
        return NULL;
    int sending = PyObject_IsTrue(arg);
    if (sending < 0)
        return NULL;
    lock_engine(h->engine);
    s->sending = (uint8_t)sending;
    unlock_engine(h->engine);
    Py_RETURN_NONE;
}

/* media_started(): the caller's first packet latched (PacedSender.caller_media_started). */
static PyObject *stream_media_started(StreamObject *h, PyObject *unused) {
    (void)unused;
    Stream *s = live(h);
    if (s == NULL)
        return NULL;
    lock_engine(h->engine);
    s->idle_sends_silence = s->send_silence;
    int failed = wake(h->engine, s);
    unlock_engine(h->engine);
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
    lock_engine(h->engine);
    Stream copy = *s;
    if (report)
        s->sent_since_report = 0;
    unlock_engine(h->engine);
    return Py_BuildValue("(KKKKiIkii)", (unsigned long long)copy.packets,
                         (unsigned long long)copy.bytes, (unsigned long long)copy.send_errors,
                         (unsigned long long)copy.reanchors, copy.sent_since_report,
                         (unsigned int)copy.sequence, (unsigned long)copy.timestamp,
                         copy.anchored, copy.first_errno);
}

/* Out of the engine (mutex held): parked, unlisted, and no batch in flight refers to it. */
static void detach(EngineObject *e, Stream *s) {
    heap_remove(e, s);
    if (s->prev)
        s->prev->next = s->next;
    else
        e->streams = s->next;
    if (s->next)
        s->next->prev = s->prev;
    e->stream_count--;
    while (e->in_send_phase)
        pthread_cond_wait(&e->idle, &e->lock);
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
    detach(e, s);
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
    stream_free(s);
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
        detach(e, s);
        pthread_mutex_unlock(&e->lock);
        Py_END_ALLOW_THREADS
        stream_free(s);
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
    lock_engine(h->engine);
    uint32_t count = s->count;
    unlock_engine(h->engine);
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
