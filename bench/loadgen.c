/*
 * rtpai load generator: N callers in one process, one UDP socket, batched socket calls.
 *
 * Every caller sends PCMU at 50 packets/s in talk spurts (default 1 s speech, 2 s silence
 * sent as nothing, RFC 3551 DTX with the marker bit on each spurt's first packet) and records
 * every packet rtpai plays back, with its kernel receive time (SO_TIMESTAMPNS).
 *
 * All callers share one socket: rtpai latches each call on the source address it sees, and
 * the calls are told apart by rtpai's port. sendmmsg() sends every packet due in a 1 ms tick
 * in one call; recvmmsg() drains up to 64 datagrams per call.
 *
 * Markers (all times CLOCK_REALTIME ns, the clock SO_TIMESTAMPNS uses, shared by processes):
 *   caller speech payload: "RTPC" u32 call index, u32 frame number, u64 send time
 *   AI audio (fake server): "RTPD" u64 server send time, u32 delta index in its response
 *
 * stdio protocol with bench/run.py:
 *   out: PORT <p>                      after binding
 *   in:  TARGETS <port0> <port1> ...   rtpai's RTP port of each call, from the offers
 *   out: WINDOW_START / WINDOW_END     the measurement window (after --warmup seconds)
 *   out: SUMMARY {json}                after the window and a short drain
 *   in:  EOF                           exit (the socket keeps draining until then)
 *
 * --churn: calls come and go while it runs (bench/run.py's churn profile). No TARGETS line;
 * --calls is the number of slots, each idle until told, on stdin, at any time:
 *   in:  START <slot> <port>           a new call on that slot, to rtpai's RTP port <port>
 *   in:  STOP <slot>                   its call ended (no more sending, its gaps stop counting)
 * and the summary adds "stalls": every gap error over --stall-ms in the window, as
 * [arrival ms since the window start, slot, error us], so that the driver can tell how many
 * calls one stall hit at once.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define PTIME_NS 20000000LL
#define FRAME 160
#define RTP_HDR 12
#define BATCH 64
#define SEND_CHUNK 512
#define HIST_BIN_NS 10000LL /* 10 us bins */
#define HIST_BINS 200000    /* up to 2 s; beyond goes in the last bin (max kept exactly) */

typedef struct {
    uint64_t bins[HIST_BINS];
    uint64_t n;
    int64_t max;
    int64_t min;
} hist_t;

static void hist_add(hist_t *h, int64_t v) {
    int64_t b = v / HIST_BIN_NS;
    if (b < 0) b = 0;
    if (b >= HIST_BINS) b = HIST_BINS - 1;
    h->bins[b]++;
    if (h->n == 0 || v > h->max) h->max = v;
    if (h->n == 0 || v < h->min) h->min = v;
    h->n++;
}

/* The value under which `q` of the samples lie, to the bin's upper edge (10 us). */
static double hist_q_us(const hist_t *h, double q) {
    if (!h->n) return -1;
    uint64_t want = (uint64_t)(q * (double)h->n);
    if (want >= h->n) want = h->n - 1;
    uint64_t seen = 0;
    for (int i = 0; i < HIST_BINS; i++) {
        seen += h->bins[i];
        if (seen > want) return (double)((i + 1) * HIST_BIN_NS) / 1000.0;
    }
    return (double)h->max / 1000.0;
}

static void hist_json(FILE *f, const char *name, const hist_t *h) {
    fprintf(f, "\"%s\":{\"n\":%llu,\"p50_us\":%.0f,\"p99_us\":%.0f,\"p999_us\":%.0f,\"max_us\":%.1f,\"min_us\":%.1f}",
            name, (unsigned long long)h->n, hist_q_us(h, 0.5), hist_q_us(h, 0.99), hist_q_us(h, 0.999),
            h->n ? h->max / 1000.0 : -1, h->n ? h->min / 1000.0 : -1);
}

typedef struct {
    uint16_t target; /* rtpai's RTP port */
    int64_t next_due;
    uint32_t frame;  /* 20 ms slots since the call started (timestamp clock / 160) */
    uint16_t seq;
    uint32_t sent;
    uint32_t sent_speech;
    /* receive side */
    int have_last;
    int64_t last_ts;
    uint16_t last_seq;
    uint64_t received;
    int active; /* --churn: a call is on this slot */
} call_t;

#define MAX_STALLS 200000
typedef struct {
    int64_t at; /* kernel arrival, CLOCK_REALTIME ns */
    int32_t slot;
    int32_t err_us;
} stall_t;

static int64_t now_ns(clockid_t c) {
    struct timespec ts;
    clock_gettime(c, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

int main(int argc, char **argv) {
    int ncalls = 50;
    double warmup = 5, duration = 20, spurt_ms = 1000, silence_ms = 2000, drain = 0.5;
    int continuous = 0, wake_on_receive = 0, churn = 0;
    double stall_ms = 10;
    static struct option opts[] = {
        {"calls", required_argument, 0, 'n'},   {"warmup", required_argument, 0, 'w'},
        {"duration", required_argument, 0, 'd'}, {"spurt-ms", required_argument, 0, 's'},
        {"silence-ms", required_argument, 0, 'S'}, {"continuous", no_argument, 0, 'c'},
        {"drain", required_argument, 0, 'D'},   {"wake-on-receive", no_argument, 0, 'W'},
        {"churn", no_argument, 0, 'C'},         {"stall-ms", required_argument, 0, 'T'},
        {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'n': ncalls = atoi(optarg); break;
        case 'w': warmup = atof(optarg); break;
        case 'd': duration = atof(optarg); break;
        case 's': spurt_ms = atof(optarg); break;
        case 'S': silence_ms = atof(optarg); break;
        case 'c': continuous = 1; break;
        case 'D': drain = atof(optarg); break;
        case 'W': wake_on_receive = 1; break;
        case 'C': churn = 1; break;
        case 'T': stall_ms = atof(optarg); break;
        default: fprintf(stderr, "usage: loadgen --calls N --warmup S --duration S\n"); return 2;
        }
    }
    int spurt_frames = (int)(spurt_ms / 20), cycle_frames = (int)((spurt_ms + silence_ms) / 20);

    int sock = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    if (sock < 0) { perror("socket"); return 1; }
    int big = 32 << 20, one = 1;
    /* root may exceed rmem_max; otherwise take what the sysctl allows */
    if (setsockopt(sock, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big) < 0)
        setsockopt(sock, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    if (setsockopt(sock, SOL_SOCKET, SO_SNDBUFFORCE, &big, sizeof big) < 0)
        setsockopt(sock, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
    setsockopt(sock, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one);
    struct sockaddr_in me = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(sock, (struct sockaddr *)&me, sizeof me) < 0) { perror("bind"); return 1; }
    socklen_t ml = sizeof me;
    getsockname(sock, (struct sockaddr *)&me, &ml);
    printf("PORT %d\n", ntohs(me.sin_port));
    fflush(stdout);

    call_t *calls = calloc(ncalls, sizeof *calls);
    static int32_t port2call[65536];
    for (int i = 0; i < 65536; i++) port2call[i] = -1;
    char *line = NULL;
    size_t cap = 0;
    if (!churn) {
        if (getline(&line, &cap, stdin) < 0 || strncmp(line, "TARGETS", 7) != 0) {
            fprintf(stderr, "loadgen: expected TARGETS\n");
            return 2;
        }
        char *p = line + 7;
        for (int i = 0; i < ncalls; i++) {
            long port = strtol(p, &p, 10);
            if (port <= 0 || port > 65535) { fprintf(stderr, "loadgen: bad target %d\n", i); return 2; }
            calls[i].target = (uint16_t)port;
            calls[i].active = 1;
            port2call[port] = i;
        }
    }
    stall_t *stalls = churn ? calloc(MAX_STALLS, sizeof *stalls) : NULL;
    size_t nstalls = 0;
    int64_t stall_ns = (int64_t)(stall_ms * 1e6);
    char cmdbuf[65536];
    size_t cmdlen = 0;

    /* Stagger the callers over the talk-spurt cycle (and so over the 20 ms grid). */
    int64_t t0 = now_ns(CLOCK_MONOTONIC) + 20000000LL;
    int64_t cycle_ns = (int64_t)cycle_frames * PTIME_NS;
    for (int i = 0; i < ncalls; i++) {
        calls[i].next_due = t0 + (cycle_ns * i) / ncalls;
        calls[i].seq = (uint16_t)(i * 7919);
    }
    int64_t win_start = t0 + (int64_t)(warmup * 1e9), win_end = win_start + (int64_t)(duration * 1e9);
    int64_t stop_at = win_end + (int64_t)(drain * 1e9);
    printf("STREAMING\n");
    fflush(stdout);

    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    struct itimerspec its = {.it_interval = {0, 1000000}, .it_value = {0, 1000000}};
    timerfd_settime(tfd, 0, &its, NULL);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = tfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev);
    /* By default the socket is drained on each 1 ms tick, not waited on: a receiver asleep
     * in epoll makes every packet rtpai sends pay a cross-CPU wake-up (an IPI, a VM exit
     * under KVM) that a phone on another machine never costs it. SO_TIMESTAMPNS stamps
     * packets when they are queued, so arrival times keep their precision. */
    if (wake_on_receive) {
        ev.data.fd = sock;
        epoll_ctl(ep, EPOLL_CTL_ADD, sock, &ev);
    }
    if (churn) {
        ev.data.fd = 0;
        epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev);
    }

    /* send buffers */
    uint8_t (*sbuf)[RTP_HDR + FRAME] = calloc(SEND_CHUNK, RTP_HDR + FRAME);
    struct mmsghdr *smsg = calloc(SEND_CHUNK, sizeof *smsg);
    struct iovec *siov = calloc(SEND_CHUNK, sizeof *siov);
    struct sockaddr_in *sdst = calloc(SEND_CHUNK, sizeof *sdst);
    uint8_t filler[FRAME];
    for (int k = 0; k < FRAME; k++) filler[k] = (uint8_t)(0x20 + (k * 37) % 0x5f); /* not 0xFF */
    /* receive buffers */
    static uint8_t rbuf[BATCH][2048];
    static char rctl[BATCH][64];
    struct mmsghdr rmsg[BATCH];
    struct iovec riov[BATCH];
    struct sockaddr_in rsrc[BATCH];

    hist_t *gap_err = calloc(1, sizeof(hist_t)), *delta_first = calloc(1, sizeof(hist_t));
    hist_t *delta_all = calloc(1, sizeof(hist_t)), *delta_excess = calloc(1, sizeof(hist_t));
    uint64_t bursts = 0, lost_out = 0, dups = 0, reordered = 0, recv_total = 0, recv_window = 0;
    uint64_t send_errors = 0, unknown_src = 0, missed_slot = 0, sendmmsg_calls = 0, recvmmsg_calls = 0;
    int64_t rt_off = now_ns(CLOCK_REALTIME) - now_ns(CLOCK_MONOTONIC);
    int state = 0; /* 0 warm-up, 1 window, 2 drain, 3 done */
    struct rusage ru0, ru1;

    for (;;) {
        struct epoll_event evs[4];
        int ne = epoll_wait(ep, evs, 4, 100);
        int64_t mono = now_ns(CLOCK_MONOTONIC);
        if (state == 0 && mono >= win_start) {
            state = 1;
            getrusage(RUSAGE_SELF, &ru0);
            printf("WINDOW_START\n");
            fflush(stdout);
        }
        if (state == 1 && mono >= win_end) {
            state = 2;
            getrusage(RUSAGE_SELF, &ru1);
            printf("WINDOW_END\n");
            fflush(stdout);
        }
        for (int e = 0; e < ne; e++) {
            int do_recv = 1;
            if (evs[e].data.fd == 0) { /* --churn: START/STOP lines from the driver */
                ssize_t r = read(0, cmdbuf + cmdlen, sizeof cmdbuf - cmdlen - 1);
                if (r <= 0) { epoll_ctl(ep, EPOLL_CTL_DEL, 0, NULL); continue; }
                cmdlen += (size_t)r;
                cmdbuf[cmdlen] = 0;
                char *start = cmdbuf, *nl;
                while ((nl = strchr(start, '\n')) != NULL) {
                    *nl = 0;
                    int slot = -1, port = 0;
                    if (sscanf(start, "START %d %d", &slot, &port) == 2 && slot >= 0 &&
                        slot < ncalls && port > 0 && port < 65536) {
                        call_t *c = &calls[slot];
                        if (c->active) port2call[c->target] = -1;
                        memset(c, 0, sizeof *c);
                        c->target = (uint16_t)port;
                        c->active = 1;
                        c->seq = (uint16_t)(slot * 7919);
                        c->next_due = now_ns(CLOCK_MONOTONIC);
                        port2call[port] = slot;
                    } else if (sscanf(start, "STOP %d", &slot) == 1 && slot >= 0 && slot < ncalls) {
                        if (calls[slot].active) port2call[calls[slot].target] = -1;
                        calls[slot].active = 0;
                    }
                    start = nl + 1;
                }
                cmdlen -= (size_t)(start - cmdbuf);
                memmove(cmdbuf, start, cmdlen);
                continue;
            }
            if (evs[e].data.fd == tfd) {
                uint64_t exp;
                if (read(tfd, &exp, sizeof exp) < 0) {}
                do_recv = !wake_on_receive;
                if (state >= 2) goto sent;
                int n = 0;
                int64_t rt = now_ns(CLOCK_REALTIME);
                for (int i = 0; i < ncalls; i++) {
                    call_t *c = &calls[i];
                    if (!c->active) continue;
                    while (c->next_due <= mono) {
                        int pos = (int)(c->frame % cycle_frames);
                        int speech = pos < spurt_frames;
                        if (speech || continuous) {
                            uint8_t *b = sbuf[n];
                            b[0] = 0x80;
                            b[1] = (speech && pos == 0) ? 0x80 : 0x00; /* PT 0, marker */
                            uint16_t s = htons(c->seq++);
                            uint32_t ts = htonl(c->frame * FRAME), ssrc = htonl(0x10000000u + i);
                            memcpy(b + 2, &s, 2);
                            memcpy(b + 4, &ts, 4);
                            memcpy(b + 8, &ssrc, 4);
                            if (speech) {
                                memcpy(b + RTP_HDR, filler, FRAME);
                                memcpy(b + RTP_HDR, "RTPC", 4);
                                put32(b + RTP_HDR + 4, (uint32_t)i);
                                put32(b + RTP_HDR + 8, c->sent_speech);
                                put64(b + RTP_HDR + 12, (uint64_t)rt);
                                c->sent_speech++;
                            } else {
                                memset(b + RTP_HDR, 0xFF, FRAME); /* mu-law silence */
                            }
                            c->sent++;
                            siov[n].iov_base = b;
                            siov[n].iov_len = RTP_HDR + FRAME;
                            sdst[n].sin_family = AF_INET;
                            sdst[n].sin_addr.s_addr = htonl(INADDR_LOOPBACK);
                            sdst[n].sin_port = htons(c->target);
                            memset(&smsg[n].msg_hdr, 0, sizeof smsg[n].msg_hdr);
                            smsg[n].msg_hdr.msg_name = &sdst[n];
                            smsg[n].msg_hdr.msg_namelen = sizeof sdst[n];
                            smsg[n].msg_hdr.msg_iov = &siov[n];
                            smsg[n].msg_hdr.msg_iovlen = 1;
                            n++;
                        }
                        c->frame++;
                        c->next_due += PTIME_NS;
                        if (n == SEND_CHUNK) {
                            int r = sendmmsg(sock, smsg, n, 0);
                            sendmmsg_calls++;
                            if (r < n) send_errors += n - (r < 0 ? 0 : r);
                            n = 0;
                        }
                    }
                }
                if (n) {
                    int done = 0;
                    while (done < n) {
                        int r = sendmmsg(sock, smsg + done, n - done, 0);
                        sendmmsg_calls++;
                        if (r <= 0) { send_errors += n - done; break; }
                        done += r;
                    }
                }
            sent:;
            }
            if (do_recv) {
                for (;;) {
                    for (int k = 0; k < BATCH; k++) {
                        riov[k].iov_base = rbuf[k];
                        riov[k].iov_len = sizeof rbuf[k];
                        memset(&rmsg[k].msg_hdr, 0, sizeof rmsg[k].msg_hdr);
                        rmsg[k].msg_hdr.msg_name = &rsrc[k];
                        rmsg[k].msg_hdr.msg_namelen = sizeof rsrc[k];
                        rmsg[k].msg_hdr.msg_iov = &riov[k];
                        rmsg[k].msg_hdr.msg_iovlen = 1;
                        rmsg[k].msg_hdr.msg_control = rctl[k];
                        rmsg[k].msg_hdr.msg_controllen = sizeof rctl[k];
                    }
                    int r = recvmmsg(sock, rmsg, BATCH, MSG_DONTWAIT, NULL);
                    recvmmsg_calls++;
                    if (r <= 0) break;
                    for (int k = 0; k < r; k++) {
                        recv_total++;
                        int64_t kts = -1;
                        for (struct cmsghdr *cm = CMSG_FIRSTHDR(&rmsg[k].msg_hdr); cm;
                             cm = CMSG_NXTHDR(&rmsg[k].msg_hdr, cm)) {
                            if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_TIMESTAMPNS) {
                                struct timespec t;
                                memcpy(&t, CMSG_DATA(cm), sizeof t);
                                kts = (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
                            }
                        }
                        if (kts < 0) kts = now_ns(CLOCK_REALTIME);
                        int idx = port2call[ntohs(rsrc[k].sin_port)];
                        unsigned len = rmsg[k].msg_len;
                        if (idx < 0 || len < RTP_HDR) { unknown_src++; continue; }
                        call_t *c = &calls[idx];
                        c->received++;
                        uint8_t *b = rbuf[k];
                        uint16_t seq = (uint16_t)(b[2] << 8 | b[3]);
                        int64_t kmono = kts - rt_off; /* window bounds are on the monotonic clock */
                        int in_window = kmono >= win_start && kmono < win_end;
                        if (in_window) {
                            recv_window++;
                            if (c->have_last && c->last_ts - rt_off >= win_start) {
                                int64_t gap = kts - c->last_ts;
                                int64_t err = gap > PTIME_NS ? gap - PTIME_NS : PTIME_NS - gap;
                                hist_add(gap_err, err);
                                if (stalls && err > stall_ns && nstalls < MAX_STALLS) {
                                    stalls[nstalls].at = kts;
                                    stalls[nstalls].slot = idx;
                                    stalls[nstalls].err_us = (int32_t)(err / 1000);
                                    nstalls++;
                                }
                                if (gap < PTIME_NS / 2) bursts++;
                                uint16_t d = (uint16_t)(seq - c->last_seq);
                                if (d == 0) dups++;
                                else if (d < 1000) lost_out += d - 1;
                                else reordered++;
                            }
                            if (len >= RTP_HDR + 16 && memcmp(b + RTP_HDR, "RTPD", 4) == 0) {
                                uint64_t sent_ns;
                                uint32_t didx;
                                memcpy(&sent_ns, b + RTP_HDR + 4, 8);
                                memcpy(&didx, b + RTP_HDR + 12, 4);
                                int64_t lat = kts - (int64_t)sent_ns;
                                hist_add(delta_all, lat);
                                if (didx == 0) {
                                    hist_add(delta_first, lat);
                                    /* The pacer's grid as the caller sees it: the previous
                                     * packet's arrival plus whole ptimes. The first slot after
                                     * the delta was sent is what an engine with no processing
                                     * delay would have used; the excess is rtpai's own. */
                                    if (c->have_last && (int64_t)sent_ns > c->last_ts &&
                                        (int64_t)sent_ns - c->last_ts < 1000000000LL) {
                                        int64_t k2 = ((int64_t)sent_ns - c->last_ts + PTIME_NS - 1) / PTIME_NS;
                                        int64_t slot = c->last_ts + k2 * PTIME_NS;
                                        int64_t excess = kts - slot;
                                        if (excess > PTIME_NS / 2) missed_slot++;
                                        hist_add(delta_excess, excess < 0 ? 0 : excess);
                                    }
                                }
                            }
                        }
                        c->have_last = 1;
                        c->last_ts = kts;
                        c->last_seq = seq;
                    }
                    if (r < BATCH) break;
                }
            }
        }
        if (state == 2 && mono >= stop_at) break;
    }

    uint64_t sent = 0, sent_speech = 0;
    int silent_calls = 0;
    for (int i = 0; i < ncalls; i++) {
        sent += calls[i].sent;
        sent_speech += calls[i].sent_speech;
        if (!calls[i].received) silent_calls++;
    }
    double cpu_ms = ((ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec) + (ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec)) * 1e3 +
                    ((ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec) + (ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec)) / 1e3;
    printf("SUMMARY {\"calls\":%d,\"window_s\":%.3f,\"cpu_ms_window\":%.1f,\"sent\":%llu,\"sent_speech\":%llu,"
           "\"send_errors\":%llu,\"sendmmsg_calls\":%llu,\"recvmmsg_calls\":%llu,\"recv_total\":%llu,"
           "\"recv_window\":%llu,\"lost_out\":%llu,\"dups\":%llu,\"reordered\":%llu,\"unknown_src\":%llu,"
           "\"bursts_lt10ms\":%llu,\"missed_slot\":%llu,\"silent_calls\":%d,",
           ncalls, duration, cpu_ms, (unsigned long long)sent, (unsigned long long)sent_speech,
           (unsigned long long)send_errors, (unsigned long long)sendmmsg_calls,
           (unsigned long long)recvmmsg_calls, (unsigned long long)recv_total,
           (unsigned long long)recv_window, (unsigned long long)lost_out, (unsigned long long)dups,
           (unsigned long long)reordered, (unsigned long long)unknown_src, (unsigned long long)bursts,
           (unsigned long long)missed_slot, silent_calls);
    hist_json(stdout, "gap_err", gap_err);
    putchar(',');
    hist_json(stdout, "delta_first", delta_first);
    putchar(',');
    hist_json(stdout, "delta_all", delta_all);
    putchar(',');
    hist_json(stdout, "delta_excess", delta_excess);
    if (stalls) {
        int64_t win_rt = win_start + rt_off;
        printf(",\"stalls\":[");
        for (size_t k = 0; k < nstalls; k++)
            printf("%s[%.3f,%d,%d]", k ? "," : "", (stalls[k].at - win_rt) / 1e6, stalls[k].slot,
                   stalls[k].err_us);
        printf("]");
    }
    printf(",\"sent_per_call\":[");
    for (int i = 0; i < ncalls; i++) printf("%s%u", i ? "," : "", calls[i].sent);
    printf("]}\n");
    fflush(stdout);

    /* Keep draining until the driver has deleted the calls and closes our stdin, so rtpai's
     * last packets meet an open socket rather than ICMP port-unreachable. */
    struct pollfd pf[2] = {{.fd = 0, .events = POLLIN}, {.fd = sock, .events = POLLIN}};
    for (;;) {
        if (poll(pf, 2, 1000) < 0 && errno != EINTR) break;
        if (pf[1].revents) {
            while (recv(sock, rbuf[0], sizeof rbuf[0], MSG_DONTWAIT) > 0) {}
        }
        if (pf[0].revents) {
            ssize_t r = getline(&line, &cap, stdin);
            if (r <= 0) break;
        }
    }
    return 0;
}
