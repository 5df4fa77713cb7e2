/* media/_fast_sendthread.h: what the media send thread's parts share (the overview is in
 * _fast_sendthread.c; the Python types are _fast_sendengine.c and _fast_sendstream.c). */
#ifndef RTPAI_MEDIA_FAST_SENDTHREAD_H
#define RTPAI_MEDIA_FAST_SENDTHREAD_H

#include "_fast.h"

#include <pthread.h>
#include <sys/socket.h>

/* media/clock.py's TICK and COALESCE: the lattice every grid is anchored on. */
#define TICK 0.001
#define COALESCE (TICK / 2)
/* The largest frame: 40 ms of G.711 is 320 bytes (media/sdp_answer.py's SUPPORTED_PTIMES);
 * 60 ms leaves room and keeps a batch entry small. register() refuses more (ValueError: the
 * call keeps the Python sender). */
#define MAX_FRAME 480
/* Frames sent per send phase: the mutex is released for each batch of this many sendmsg(). */
#define BATCH_CAPACITY 128
/* Events between two drains: a talkspurt's start and end per call, i.e. ~1 a second per call;
 * the drain runs within a millisecond or so of the eventfd. A full ring loses events, counted
 * (``events_lost``): the Python side's only effect is a late first_rtp mark, a missing
 * latency sample or a ran-dry signal (hang-up after goodbye then waits for the next one). */
#define EVENT_CAPACITY 8192
#define LATENESS_CAPACITY 2048
/* A ring is allocated with this many frames when audio comes, doubles up to the playout
 * queue's max_bytes, and is freed when it runs empty: a call holds ring memory only while it
 * plays (~50 talkspurts' worth of mallocs a second at 1000 calls: nothing). */
#define RING_INITIAL 16
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


/* _fast_sendthread.c: the thread and the schedule; st_lock/st_unlock from Python only. */
double st_now(EngineObject *e);
int st_wake(EngineObject *e, Stream *s);
size_t st_wake_up(EngineObject *e, double now);
void *st_thread_main(void *arg);
void st_lock(EngineObject *e);
void st_unlock(EngineObject *e);
void st_detach(EngineObject *e, Stream *s);
void st_stream_free(Stream *s);
void st_close_fd(int *fd);
void st_ring_release(Stream *s);
int st_ring_reserve(Stream *s, uint32_t extra);

#endif
