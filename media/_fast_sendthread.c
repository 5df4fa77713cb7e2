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
 * In parts: this file (the thread, the schedule, a wake-up's work), _fast_sendengine.c and
 * _fast_sendstream.c (the two Python types), _fast_sendthread.h (what they share).
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
#include "_fast_sendthread.h"

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

/* --- time and the lattice (media/clock.py) ----------------------------------------------- */

double st_now(EngineObject *e) {
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
int st_wake(EngineObject *e, Stream *s) {
    if (s->heap_index >= 0 || s->fd < 0)
        return 0;
    if (!s->idle_sends_silence && s->count == 0)
        return 0;
    double now = st_now(e);
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
    rtp_write_header(p, marker, s->payload_type, seq, ts, s->ssrc);
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

/* An empty ring's memory goes back (RING_INITIAL's comment). */
void st_ring_release(Stream *s) {
    free(s->ring);
    s->ring = NULL;
    s->ring_capacity = 0;
    s->head = 0;
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
        send_frame(e, s, frame); /* copied: the ring may go now */
        if (s->count == 0)
            st_ring_release(s);
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
size_t st_wake_up(EngineObject *e, double now) {
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

void *st_thread_main(void *arg) {
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
            st_wake_up(e, st_now(e));
        }
    }
    pthread_mutex_unlock(&e->lock);
    return NULL;
}

/* --- locking from Python ------------------------------------------------------------------ */

/* The mutex, taken with the GIL released when the thread holds it (it never takes the GIL,
 * so either order is deadlock-free; releasing lets other Python threads run meanwhile). */
void st_lock(EngineObject *e) {
    if (pthread_mutex_trylock(&e->lock) == 0)
        return;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&e->lock);
    Py_END_ALLOW_THREADS
}

void st_unlock(EngineObject *e) { pthread_mutex_unlock(&e->lock); }

void st_close_fd(int *fd) {
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

void st_stream_free(Stream *s) {
    st_close_fd(&s->fd);
    free(s->ring);
    free(s);
}

/* Room for `extra` more frames: the ring grows, up to ring_max (what the playout queue's
 * max_bytes holds). */
int st_ring_reserve(Stream *s, uint32_t extra) {
    uint32_t need = s->count + extra;
    if (need <= s->ring_capacity)
        return 0;
    /* A quarter more than needed, in steps of RING_INITIAL frames: the AI's audio arrives in
     * bursts of a few frames, and doubling held up to twice the audio queued (~7 KiB a call
     * more than the Python queue's bytearray at 200 calls in bench.run). */
    uint64_t want = (uint64_t)need + need / 4;
    want = (want + RING_INITIAL - 1) / RING_INITIAL * RING_INITIAL;
    uint32_t capacity = want > s->ring_max ? s->ring_max : (uint32_t)want;
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

/* Out of the engine (mutex held): parked, unlisted, and no batch in flight refers to it. */
void st_detach(EngineObject *e, Stream *s) {
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
