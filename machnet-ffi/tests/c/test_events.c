/*
 * C tests of libmachnet's flow events (machnet_next_event) and sidecar handles (machnet_open,
 * machnet_attach_to: two sidecars in one process) against real sidecars started by
 * ci/ffi.sh (the environment of test_machnet.c: MACHNET_TEST_SOCK is this process's sidecar,
 * MACHNET_TEST_PEER_SOCK the peer's, MACHNET_TEST_LOCAL_IP / MACHNET_TEST_PEER_IP their
 * addresses). Each case opens its own channels and flows on a port of its own.
 *
 * Every case prints "ok - NAME" or "not ok - NAME"; the last line is "c-tests: P passed, F failed".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "machnet.h"
#include "check.h"

static const char *sock, *peer_sock, *local_ip, *peer_ip;

/* A channel on the peer's sidecar (machnet_init_at is process-global: switch and back). */
static void *attach_peer(void) {
    if (machnet_init_at(peer_sock) != 0) return NULL;
    void *c = machnet_attach();
    int e = errno;
    if (machnet_init_at(sock) != 0) return NULL;
    errno = e;
    return c;
}

/* A server channel on the peer listening on `port`, and a client channel here with `nflows`
 * flows to it; each flow carries one "ping" so that the server knows it. */
struct pair {
    void *srv, *c;
    MachnetFlow_t flows[8];
};

static int open_pair(struct pair *p, uint16_t port, int nflows) {
    memset(p, 0, sizeof *p);
    p->srv = attach_peer();
    CHECK(p->srv != NULL);
    CHECK(machnet_listen(p->srv, peer_ip, port) == 0);
    p->c = machnet_attach();
    CHECK(p->c != NULL);
    for (int i = 0; i < nflows; i++) {
        CHECK(machnet_connect(p->c, local_ip, peer_ip, port, &p->flows[i]) == 0);
        CHECK(machnet_send(p->c, p->flows[i], "ping", 4) == 0);
        char buf[8];
        MachnetFlow_t from;
        CHECK(machnet_recv_timeout(p->srv, buf, sizeof buf, &from, 10000) == 4);
    }
    return 0;
}

/* Whether event flow `e` names the connected flow `f` (events use the received orientation). */
static int same_flow(MachnetFlow_t e, MachnetFlow_t f) {
    return e.src_ip == f.dst_ip && e.src_port == f.dst_port && e.dst_ip == f.src_ip &&
           e.dst_port == f.src_port;
}

/* Receives (no message may come) until an event is there; 1 if one was copied to *ev. */
static int await_event(void *c, MachnetFlowEvent_t *ev) {
    for (int i = 0; i < 400; i++) {
        int r = machnet_next_event(c, ev);
        if (r != 0) return r;
        char buf[16];
        MachnetFlow_t from;
        if (machnet_recv_timeout(c, buf, sizeof buf, &from, 25) != 0) return -1;
    }
    return 0;
}

static int t_argument_checks(void) {
    MachnetFlowEvent_t ev;
    FAILS(machnet_next_event(NULL, &ev), EINVAL);
    FAILS(machnet_set_event_limit(NULL, 4), EINVAL);
    FAILS(machnet_events_dropped(NULL), EINVAL);
    void *c = machnet_attach();
    CHECK(c != NULL);
    FAILS(machnet_next_event(c, NULL), EINVAL);
    CHECK(machnet_next_event(c, &ev) == 0); /* a fresh channel has none */
    CHECK(machnet_events_dropped(c) == 0);
    CHECK(machnet_detach(c) == 0);
    FAILS(machnet_next_event(c, &ev), EBADF);
    FAILS(machnet_events_dropped(c), EBADF);
    CHECK(sizeof(MachnetFlowEvent_t) == 20);
    return 0;
}

/* The peer aborts: a reset event naming the flow, then sends fail. */
static int t_reset(void) {
    struct pair p;
    CHECK(open_pair(&p, 4400, 1) == 0);
    CHECK(machnet_detach_abort(p.srv) == 0);
    MachnetFlowEvent_t ev;
    CHECK(await_event(p.c, &ev) == 1);
    CHECK(ev.kind == MACHNET_EVENT_RESET);
    CHECK(ev.err == ECONNRESET);
    CHECK(same_flow(ev.flow, p.flows[0]));
    CHECK(machnet_next_event(p.c, &ev) == 0); /* one terminal event, nothing else */
    CHECK(machnet_send(p.c, p.flows[0], "x", 1) == -1);
    CHECK(machnet_detach(p.c) == 0);
    return 0;
}

/* The peer sends, then detaches gracefully: every message first, then peer-closed and a
 * graceful end (err 0), never a reset. */
static int t_graceful_close(void) {
    struct pair p;
    CHECK(open_pair(&p, 4401, 1) == 0);
    MachnetFlow_t sf = p.flows[0], tmp = sf;
    /* the server's view: swap ends */
    sf.src_ip = tmp.dst_ip, sf.src_port = tmp.dst_port, sf.dst_ip = tmp.src_ip,
    sf.dst_port = tmp.src_port;
    CHECK(machnet_send(p.srv, sf, "one", 3) == 0);
    CHECK(machnet_send(p.srv, sf, "two", 3) == 0);
    CHECK(machnet_detach(p.srv) == 0);
    char buf[16];
    MachnetFlow_t from;
    CHECK(machnet_recv_timeout(p.c, buf, sizeof buf, &from, 10000) == 3 && !memcmp(buf, "one", 3));
    /* Events behind a message are not reported before it. */
    MachnetFlowEvent_t ev;
    CHECK(machnet_recv_timeout(p.c, buf, sizeof buf, &from, 10000) == 3 && !memcmp(buf, "two", 3));
    CHECK(await_event(p.c, &ev) == 1);
    CHECK(ev.kind == MACHNET_EVENT_PEER_CLOSED && ev.err == 0);
    CHECK(same_flow(ev.flow, p.flows[0]));
    CHECK(await_event(p.c, &ev) == 1);
    CHECK(ev.kind == MACHNET_EVENT_CLOSED && ev.err == 0);
    CHECK(same_flow(ev.flow, p.flows[0]));
    CHECK(machnet_next_event(p.c, &ev) == 0);
    CHECK(machnet_detach(p.c) == 0);
    return 0;
}

/* machnet_next_event alone finds events (no receive call), and holds a message it meets for
 * the next receive: messages and events stay in order. */
static int t_next_event_holds_a_message(void) {
    struct pair p;
    CHECK(open_pair(&p, 4402, 2) == 0);
    MachnetFlow_t sf = {p.flows[1].dst_ip, p.flows[1].src_ip, p.flows[1].dst_port,
                        p.flows[1].src_port};
    CHECK(machnet_send(p.srv, sf, "last", 4) == 0);
    /* Wait for the message with peek (which holds it for the next receive); an abort would
     * discard it if it were still on its way. */
    ssize_t size = 0;
    for (int i = 0; i < 400 && size == 0; i++) {
        size = machnet_peek(p.c);
        if (size == 0) usleep(25000);
    }
    CHECK(size == 4);
    CHECK(machnet_detach_abort(p.srv) == 0);
    usleep(100000); /* not needed for correctness: gives the resets time to queue up behind */
    MachnetFlowEvent_t ev;
    CHECK(machnet_next_event(p.c, &ev) == 0); /* the held message comes first */
    char buf[16];
    MachnetFlow_t from;
    CHECK(machnet_recv(p.c, buf, sizeof buf, &from) == 4 && !memcmp(buf, "last", 4));
    int resets = 0;
    for (int i = 0; i < 400 && resets < 2; i++) {
        int r = machnet_next_event(p.c, &ev); /* no receive call at all */
        CHECK(r >= 0);
        if (r == 1) {
            CHECK(ev.kind == MACHNET_EVENT_RESET && ev.err == ECONNRESET);
            resets++;
        } else {
            usleep(25000);
        }
    }
    CHECK(resets == 2);
    CHECK(machnet_detach(p.c) == 0);
    return 0;
}

/* A refused connect fails in machnet_connect (ECONNREFUSED or ETIMEDOUT): no flow, no event. */
static int t_refused(void) {
    void *c = machnet_attach();
    CHECK(c != NULL);
    MachnetFlow_t f;
    errno = 0;
    CHECK(machnet_connect(c, local_ip, peer_ip, 4403, &f) == -1);
    CHECK(errno == ECONNREFUSED || errno == ETIMEDOUT);
    MachnetFlowEvent_t ev;
    char buf[8];
    MachnetFlow_t from;
    CHECK(machnet_recv_timeout(c, buf, sizeof buf, &from, 100) == 0);
    CHECK(machnet_next_event(c, &ev) == 0);
    CHECK(machnet_detach(c) == 0);
    return 0;
}

struct blocked {
    void *c;
    ssize_t ret;
    int err;
    char buf[16];
    volatile int done;
};

static void *blocked_recv(void *arg) {
    struct blocked *b = arg;
    MachnetFlow_t f;
    b->ret = machnet_recv_timeout(b->c, b->buf, sizeof b->buf, &f, 20000);
    b->err = errno;
    __atomic_store_n(&b->done, 1, __ATOMIC_SEQ_CST);
    return NULL;
}

/* A thread blocked in machnet_recv_timeout takes the reset off the ring and keeps waiting; the
 * event is kept for machnet_next_event, and a later message still wakes the receiver. */
static int t_event_while_another_thread_receives(void) {
    struct pair p;
    CHECK(open_pair(&p, 4404, 1) == 0);
    struct pair q; /* a second flow, whose server stays */
    CHECK(open_pair(&q, 4405, 1) == 0);
    /* Move q's flow onto p's client channel: connect p.c to q's listener too. */
    MachnetFlow_t f2;
    CHECK(machnet_connect(p.c, local_ip, peer_ip, 4405, &f2) == 0);
    CHECK(machnet_send(p.c, f2, "ping", 4) == 0);
    char buf[16];
    MachnetFlow_t sf2;
    CHECK(machnet_recv_timeout(q.srv, buf, sizeof buf, &sf2, 10000) == 4);
    struct blocked b;
    memset(&b, 0, sizeof b);
    b.c = p.c;
    pthread_t t;
    CHECK(pthread_create(&t, NULL, blocked_recv, &b) == 0);
    CHECK(machnet_detach_abort(p.srv) == 0);
    MachnetFlowEvent_t ev;
    int got = 0;
    for (int i = 0; i < 400 && !got; i++) {
        got = machnet_next_event(p.c, &ev);
        CHECK(got >= 0);
        if (!got) usleep(25000);
    }
    CHECK(got == 1);
    CHECK(ev.kind == MACHNET_EVENT_RESET && same_flow(ev.flow, p.flows[0]));
    CHECK(!__atomic_load_n(&b.done, __ATOMIC_SEQ_CST)); /* still waiting for a message */
    CHECK(machnet_send(q.srv, sf2, "wake", 4) == 0);
    pthread_join(t, NULL);
    CHECK(b.ret == 4 && !memcmp(b.buf, "wake", 4));
    CHECK(machnet_detach(q.srv) == 0);
    CHECK(machnet_detach(q.c) == 0);
    CHECK(machnet_detach(p.c) == 0);
    return 0;
}

struct ev_waiter {
    void *c;
    int ret;
    MachnetFlowEvent_t ev;
};

static void *wait_event_thread(void *arg) {
    struct ev_waiter *w = arg;
    w->ret = machnet_next_event_timeout(w->c, &w->ev, 20000);
    return NULL;
}

/* machnet_next_event_timeout sleeps until an event comes (0 when the timeout passes), also
 * while another thread receives the messages in front of it. */
static int t_next_event_timeout(void) {
    struct pair p;
    CHECK(open_pair(&p, 4408, 1) == 0);
    MachnetFlowEvent_t ev;
    CHECK(machnet_next_event_timeout(p.c, &ev, 50) == 0);
    struct ev_waiter w = {p.c, -2, {{0, 0, 0, 0}, 0, 0}};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, wait_event_thread, &w) == 0);
    MachnetFlow_t sf = {p.flows[0].dst_ip, p.flows[0].src_ip, p.flows[0].dst_port,
                        p.flows[0].src_port};
    CHECK(machnet_send(p.srv, sf, "msg", 3) == 0);
    char buf[16];
    MachnetFlow_t from;
    CHECK(machnet_recv_timeout(p.c, buf, sizeof buf, &from, 10000) == 3);
    CHECK(machnet_detach_abort(p.srv) == 0);
    pthread_join(t, NULL);
    CHECK(w.ret == 1);
    CHECK(w.ev.kind == MACHNET_EVENT_RESET && same_flow(w.ev.flow, p.flows[0]));
    CHECK(machnet_detach(p.c) == 0);
    return 0;
}

/* The channel fd becomes readable for an event as for a message. */
static int t_channel_fd_wakes_for_an_event(void) {
    struct pair p;
    CHECK(open_pair(&p, 4406, 1) == 0);
    int fd = machnet_channel_fd(p.c);
    CHECK(fd >= 0);
    char buf[16];
    MachnetFlow_t from;
    MachnetFlowEvent_t ev;
    CHECK(machnet_recv(p.c, buf, sizeof buf, &from) == 0); /* arms the fd */
    CHECK(machnet_next_event(p.c, &ev) == 0);
    CHECK(machnet_detach_abort(p.srv) == 0);
    int got = 0;
    for (int i = 0; i < 100 && !got; i++) {
        struct pollfd pfd = {fd, POLLIN, 0};
        CHECK(poll(&pfd, 1, 10000) == 1); /* readiness may be spurious: loop as documented */
        CHECK(machnet_recv(p.c, buf, sizeof buf, &from) == 0);
        got = machnet_next_event(p.c, &ev);
        CHECK(got >= 0);
    }
    CHECK(got == 1 && ev.kind == MACHNET_EVENT_RESET);
    CHECK(machnet_detach(p.c) == 0);
    return 0;
}

/* The queue is bounded: with a limit of 2, four resets keep the first two and count two. */
static int t_queue_is_bounded(void) {
    struct pair p;
    CHECK(open_pair(&p, 4407, 4) == 0);
    CHECK(machnet_set_event_limit(p.c, 2) == 0);
    CHECK(machnet_detach_abort(p.srv) == 0);
    char buf[16];
    MachnetFlow_t from;
    for (int i = 0; i < 400 && machnet_events_dropped(p.c) < 2; i++)
        CHECK(machnet_recv_timeout(p.c, buf, sizeof buf, &from, 25) == 0);
    CHECK(machnet_events_dropped(p.c) == 2);
    MachnetFlowEvent_t ev;
    for (int i = 0; i < 2; i++) {
        CHECK(machnet_next_event(p.c, &ev) == 1);
        CHECK(ev.kind == MACHNET_EVENT_RESET);
    }
    CHECK(machnet_next_event(p.c, &ev) == 0);
    /* Lowering the limit drops (and counts) queued events; 0 keeps none. */
    CHECK(machnet_set_event_limit(p.c, 0) == 0);
    CHECK(machnet_events_dropped(p.c) == 2);
    CHECK(machnet_detach(p.c) == 0);
    return 0;
}

/* Two sidecars in one process through machnet_open handles, without machnet_init: a server
 * channel on one, a client on the other, a message each way; machnet_init's attachment is
 * untouched. */
static int t_two_sidecars_in_one_process(void) {
    errno = 0;
    CHECK(machnet_open("/nonexistent/machnet.sock") == NULL && errno == ENOENT);
    errno = 0;
    CHECK(machnet_attach_to(NULL) == NULL && errno == EINVAL);
    FAILS(machnet_close_sidecar(NULL), EINVAL);
    void *a = machnet_open(peer_sock), *b = machnet_open(sock);
    CHECK(a != NULL && b != NULL && a != b);
    void *srv = machnet_attach_to(a), *c = machnet_attach_to(b);
    CHECK(srv != NULL && c != NULL);
    /* A handle of one kind is not accepted as the other. */
    errno = 0;
    CHECK(machnet_attach_to(srv) == NULL && errno == EBADF);
    FAILS(machnet_close_sidecar(srv), EBADF);
    FAILS(machnet_detach(a), EBADF);
    CHECK(machnet_sidecar_engines(a) >= 1);
    FAILS(machnet_sidecar_engines(NULL), EINVAL);
    FAILS(machnet_sidecar_engines(srv), EBADF);
    CHECK(machnet_listen(srv, peer_ip, 4410) == 0);
    MachnetFlow_t f, sf;
    CHECK(machnet_connect(c, local_ip, peer_ip, 4410, &f) == 0);
    CHECK(machnet_send(c, f, "hello", 5) == 0);
    char buf[16];
    CHECK(machnet_recv_timeout(srv, buf, sizeof buf, &sf, 10000) == 5 && !memcmp(buf, "hello", 5));
    /* Closing the sidecar handles leaves their channels working. */
    CHECK(machnet_close_sidecar(a) == 0);
    CHECK(machnet_close_sidecar(b) == 0);
    FAILS(machnet_close_sidecar(a), EBADF);
    errno = 0;
    CHECK(machnet_attach_to(b) == NULL && errno == EBADF);
    CHECK(machnet_send(srv, sf, "back", 4) == 0);
    MachnetFlow_t from;
    CHECK(machnet_recv_timeout(c, buf, sizeof buf, &from, 10000) == 4 && !memcmp(buf, "back", 4));
    CHECK(machnet_detach(srv) == 0);
    CHECK(machnet_detach(c) == 0);
    FAILS(machnet_sidecar_engines(a), EBADF); /* closed above */
    /* machnet_init's attachment (sidecar b, set up in main) still serves machnet_attach. */
    void *d = machnet_attach();
    CHECK(d != NULL);
    CHECK(machnet_listen(d, local_ip, 4411) == 0);
    CHECK(machnet_detach(d) == 0);
    return 0;
}

/* The next machnet_recv_any result on `c` within 10 s: 1 with *ev / *n set. */
static int any(void *c, void *buf, size_t len, size_t *n, MachnetFlowEvent_t *ev) {
    return machnet_recv_any(c, buf, len, n, ev, 10000);
}

/* machnet_recv_any: an accept event before any message, the flow's messages in order, its
 * peer's close after them, and no auto-close: the server still sends after the client closed
 * (half-close); the client sees that reply, then the server's close. */
static int t_recv_any_half_close(void) {
    void *srv = attach_peer();
    CHECK(srv != NULL);
    CHECK(machnet_listen(srv, peer_ip, 4412) == 0);
    void *c = machnet_attach();
    CHECK(c != NULL);
    char buf[64];
    size_t n = 99;
    MachnetFlowEvent_t ev;
    FAILS(machnet_recv_any(srv, buf, sizeof buf, NULL, &ev, 0), EINVAL);
    FAILS(machnet_recv_any(srv, buf, sizeof buf, &n, NULL, 0), EINVAL);
    FAILS(machnet_recv_any(NULL, buf, sizeof buf, &n, &ev, 0), EINVAL);
    CHECK(machnet_recv_any(srv, buf, sizeof buf, &n, &ev, 0) == 0 && n == 0);
    MachnetFlow_t f;
    CHECK(machnet_connect(c, local_ip, peer_ip, 4412, &f) == 0);
    /* The client sent nothing: the server still learns of the flow. */
    CHECK(any(srv, buf, sizeof buf, &n, &ev) == 1);
    CHECK(ev.kind == MACHNET_EVENT_ACCEPTED && ev.err == 0 && n == 0);
    /* Received orientation: src = the peer (the client), as the connected flow's src. */
    CHECK(ev.flow.src_ip == f.src_ip && ev.flow.src_port == f.src_port &&
          ev.flow.dst_ip == f.dst_ip && ev.flow.dst_port == f.dst_port);
    MachnetFlow_t sf = ev.flow;
    CHECK(machnet_send(c, f, "one", 3) == 0);
    CHECK(machnet_send(c, f, "two!", 4) == 0);
    CHECK(machnet_close(c, f) == 0);
    CHECK(any(srv, buf, sizeof buf, &n, &ev) == 1);
    CHECK(ev.kind == MACHNET_EVENT_MESSAGE && n == 3 && !memcmp(buf, "one", 3));
    /* A message larger than the buffer stays first in line. */
    n = 0;
    FAILS(machnet_recv_any(srv, buf, 2, &n, &ev, 10000), EMSGSIZE);
    CHECK(n == 4);
    CHECK(any(srv, buf, sizeof buf, &n, &ev) == 1);
    CHECK(ev.kind == MACHNET_EVENT_MESSAGE && n == 4 && !memcmp(buf, "two!", 4));
    CHECK(any(srv, buf, sizeof buf, &n, &ev) == 1);
    CHECK(ev.kind == MACHNET_EVENT_PEER_CLOSED && n == 0);
    /* No auto-close: the server's side is still open. */
    CHECK(machnet_send(srv, sf, "reply", 5) == 0);
    MachnetFlow_t from;
    CHECK(machnet_recv_timeout(c, buf, sizeof buf, &from, 10000) == 5 && !memcmp(buf, "reply", 5));
    CHECK(machnet_close(srv, sf) == 0);
    CHECK(any(srv, buf, sizeof buf, &n, &ev) == 1);
    CHECK(ev.kind == MACHNET_EVENT_CLOSED && ev.err == 0);
    CHECK(await_event(c, &ev) == 1);
    CHECK(ev.kind == MACHNET_EVENT_PEER_CLOSED || ev.kind == MACHNET_EVENT_CLOSED);
    CHECK(machnet_detach(srv) == 0);
    CHECK(machnet_detach(c) == 0);
    return 0;
}

/* machnet_set_auto_close(0): machnet_recv passes a peer's close without closing this side. */
static int t_auto_close_off(void) {
    FAILS(machnet_set_auto_close(NULL, 0), EINVAL);
    struct pair p;
    CHECK(open_pair(&p, 4413, 1) == 0);
    CHECK(machnet_set_auto_close(p.c, 0) == 0);
    MachnetFlow_t sf = {p.flows[0].dst_ip, p.flows[0].src_ip, p.flows[0].dst_port,
                        p.flows[0].src_port};
    CHECK(machnet_close(p.srv, sf) == 0);
    MachnetFlowEvent_t ev;
    CHECK(await_event(p.c, &ev) == 1);
    CHECK(ev.kind == MACHNET_EVENT_PEER_CLOSED);
    CHECK(machnet_send(p.c, p.flows[0], "late", 4) == 0);
    char buf[16];
    MachnetFlow_t from;
    CHECK(machnet_recv_timeout(p.srv, buf, sizeof buf, &from, 10000) == 4 &&
          !memcmp(buf, "late", 4));
    CHECK(machnet_detach(p.srv) == 0);
    CHECK(machnet_detach(p.c) == 0);
    return 0;
}

/* machnet_abort resets one flow; the channel's other flow goes on. */
static int t_abort_one_flow(void) {
    struct pair p;
    CHECK(open_pair(&p, 4414, 2) == 0);
    FAILS(machnet_abort(NULL, p.flows[0]), EINVAL);
    CHECK(machnet_abort(p.c, p.flows[0]) == 0);
    MachnetFlowEvent_t ev;
    char buf[16];
    size_t n;
    for (;;) {
        CHECK(any(p.srv, buf, sizeof buf, &n, &ev) == 1);
        if (ev.kind == MACHNET_EVENT_RESET) break;
    }
    CHECK(ev.err == ECONNRESET && ev.flow.src_port == p.flows[0].src_port);
    CHECK(machnet_send(p.c, p.flows[0], "x", 1) == -1);
    CHECK(machnet_send(p.c, p.flows[1], "alive", 5) == 0);
    MachnetFlow_t from;
    CHECK(machnet_recv_timeout(p.srv, buf, sizeof buf, &from, 10000) == 5);
    CHECK(from.src_port == p.flows[1].src_port);
    CHECK(machnet_detach(p.srv) == 0);
    CHECK(machnet_detach(p.c) == 0);
    return 0;
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    sock = env("MACHNET_TEST_SOCK", NULL);
    peer_sock = env("MACHNET_TEST_PEER_SOCK", NULL);
    local_ip = env("MACHNET_TEST_LOCAL_IP", "127.0.0.2");
    peer_ip = env("MACHNET_TEST_PEER_IP", "127.0.0.1");
    if (!sock || !peer_sock) {
        fprintf(stderr, "set MACHNET_TEST_SOCK and MACHNET_TEST_PEER_SOCK (ci/ffi.sh does)\n");
        return 2;
    }
    if (machnet_init_at(sock) != 0) {
        fprintf(stderr, "machnet_init_at(%s): %s\n", sock, machnet_last_error());
        printf("not ok - init\nc-tests: 0 passed, 1 failed\n");
        return 1;
    }
    struct {
        const char *name;
        int (*fn)(void);
    } cases[] = {
        {"events_argument_checks", t_argument_checks},
        {"events_reset", t_reset},
        {"events_graceful_close", t_graceful_close},
        {"events_next_event_holds_a_message", t_next_event_holds_a_message},
        {"events_refused", t_refused},
        {"events_while_another_thread_receives", t_event_while_another_thread_receives},
        {"events_channel_fd_wakes_for_an_event", t_channel_fd_wakes_for_an_event},
        {"events_queue_is_bounded", t_queue_is_bounded},
        {"events_next_event_timeout", t_next_event_timeout},
        {"two_sidecars_in_one_process", t_two_sidecars_in_one_process},
        {"recv_any_accept_messages_half_close", t_recv_any_half_close},
        {"auto_close_off", t_auto_close_off},
        {"abort_one_flow", t_abort_one_flow},
    };
    int passed = 0, failed = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int r = cases[i].fn();
        report(cases[i].name, r, &passed, &failed);
    }
    return summary(passed, failed);
}
