/*
 * C tests of libmachnet's zero-copy calls (machnet_loan / machnet_try_loan / machnet_commit /
 * machnet_loan_cancel, machnet_recv_zc / machnet_recv_zc_timeout / machnet_release) against
 * real sidecars started by ci/ffi.sh (the environment of test_events.c). Each case opens its
 * own channels and flows on a port of its own.
 *
 * Every case prints "ok - NAME" or "not ok - NAME"; the last line is "c-tests: P passed, F failed".
 */
#define _GNU_SOURCE
#include <errno.h>
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

static void *attach_peer(void) {
    if (machnet_init_at(peer_sock) != 0) return NULL;
    void *c = machnet_attach();
    int e = errno;
    if (machnet_init_at(sock) != 0) return NULL;
    errno = e;
    return c;
}

/* A server channel on the peer listening on `port` and a client channel here with one flow;
 * `sflow` is the flow as the server sees it (from the first message). */
struct pair {
    void *srv, *c;
    MachnetFlow_t flow, sflow;
};

static int open_pair(struct pair *p, uint16_t port) {
    memset(p, 0, sizeof *p);
    p->srv = attach_peer();
    CHECK(p->srv != NULL);
    CHECK(machnet_listen(p->srv, peer_ip, port) == 0);
    p->c = machnet_attach();
    CHECK(p->c != NULL);
    CHECK(machnet_connect(p->c, local_ip, peer_ip, port, &p->flow) == 0);
    CHECK(machnet_send(p->c, p->flow, "ping", 4) == 0);
    char buf[8];
    CHECK(machnet_recv_timeout(p->srv, buf, sizeof buf, &p->sflow, 10000) == 4);
    return 0;
}

static void close_pair(struct pair *p) {
    machnet_detach(p->c);
    machnet_detach(p->srv);
}

static unsigned char pat(size_t i, unsigned salt) { return (unsigned char)(i * 31 + salt); }

/* The server's next message, copied (at most `cap` bytes); its length, or -1. */
static long srv_recv(struct pair *p, unsigned char *buf, size_t cap) {
    MachnetFlow_t from;
    return machnet_recv_timeout(p->srv, buf, cap, &from, 10000);
}

static int t_argument_checks(void) {
    struct pair p;
    CHECK(open_pair(&p, 30101) == 0);
    void *b;
    const void *d;
    size_t n;
    MachnetFlow_t f;
    FAILS(machnet_loan(NULL, p.flow, 8, &b), EINVAL);
    FAILS(machnet_loan(p.c, p.flow, 8, NULL), EINVAL);
    FAILS(machnet_loan(p.c, p.flow, 0, &b), EINVAL);
    FAILS(machnet_loan(p.c, p.flow, MACHNET_MSG_MAX_LEN + 1, &b), EMSGSIZE);
    MachnetFlow_t bogus = p.flow;
    bogus.dst_port++;
    FAILS(machnet_loan(p.c, bogus, 8, &b), ENOTCONN);
    FAILS(machnet_commit(p.c, 1), EINVAL); /* no loan out */
    FAILS(machnet_loan_cancel(p.c), EINVAL);
    FAILS(machnet_recv_zc(p.c, NULL, &n, &f), EINVAL);
    FAILS(machnet_recv_zc(p.c, &d, NULL, &f), EINVAL);
    FAILS(machnet_recv_zc(p.c, &d, &n, NULL), EINVAL);
    FAILS(machnet_release(p.c), EINVAL); /* nothing borrowed */
    CHECK(machnet_recv_zc(p.c, &d, &n, &f) == 0);
    close_pair(&p);
    FAILS(machnet_loan(p.c, p.flow, 8, &b), EBADF);
    FAILS(machnet_release(p.c), EBADF);
    return 0;
}

/* Loan, write, commit part of it; cancel; bad commit lengths publish nothing. */
static int t_loan_commit_cancel(void) {
    struct pair p;
    CHECK(open_pair(&p, 30102) == 0);
    unsigned char got[256];
    void *b = NULL;
    CHECK(machnet_loan(p.c, p.flow, 200, &b) == 0);
    CHECK(b != NULL);
    memcpy(b, "partial", 7);
    memset((char *)b + 7, 'X', 193);
    CHECK(machnet_commit(p.c, 7) == 0);
    CHECK(srv_recv(&p, got, sizeof got) == 7);
    CHECK(memcmp(got, "partial", 7) == 0);
    /* The loan is over: committing again fails. */
    FAILS(machnet_commit(p.c, 7), EINVAL);

    /* Cancelled: nothing goes out; the next message is the next one sent. */
    CHECK(machnet_try_loan(p.c, p.flow, 64, &b) == 0);
    memset(b, 'C', 64);
    CHECK(machnet_loan_cancel(p.c) == 0);
    FAILS(machnet_loan_cancel(p.c), EINVAL);
    /* Length 0 and more than loaned: EINVAL, nothing published, the loan is over. */
    CHECK(machnet_loan(p.c, p.flow, 16, &b) == 0);
    memset(b, 'Z', 16);
    FAILS(machnet_commit(p.c, 17), EINVAL);
    FAILS(machnet_commit(p.c, 1), EINVAL);
    CHECK(machnet_loan(p.c, p.flow, 16, &b) == 0);
    FAILS(machnet_commit(p.c, 0), EINVAL);
    CHECK(machnet_send(p.c, p.flow, "next", 4) == 0);
    CHECK(srv_recv(&p, got, sizeof got) == 4);
    CHECK(memcmp(got, "next", 4) == 0);
    MachnetFlow_t from;
    CHECK(machnet_recv(p.srv, got, sizeof got, &from) == 0); /* nothing else came */
    close_pair(&p);
    return 0;
}

/* While a loan is out, the thread holding it cannot send or loan again (EBUSY). */
static int t_loan_busy(void) {
    struct pair p;
    CHECK(open_pair(&p, 30103) == 0);
    void *b, *b2;
    CHECK(machnet_loan(p.c, p.flow, 8, &b) == 0);
    FAILS(machnet_send(p.c, p.flow, "x", 1), EBUSY);
    FAILS(machnet_loan(p.c, p.flow, 8, &b2), EBUSY);
    FAILS(machnet_try_loan(p.c, p.flow, 8, &b2), EBUSY);
    memcpy(b, "busyloan", 8);
    CHECK(machnet_commit(p.c, 8) == 0);
    unsigned char got[16];
    CHECK(srv_recv(&p, got, sizeof got) == 8);
    CHECK(memcmp(got, "busyloan", 8) == 0);
    close_pair(&p);
    return 0;
}

struct sender_arg {
    struct pair *p;
    int rc;
};

static void *send_after(void *a) {
    struct sender_arg *s = a;
    s->rc = machnet_send(s->p->c, s->p->flow, "second", 6);
    return NULL;
}

/* Another thread's send waits for the loan and goes out after the loaned message. */
static int t_loan_holds_back_other_threads(void) {
    struct pair p;
    CHECK(open_pair(&p, 30104) == 0);
    void *b;
    CHECK(machnet_loan(p.c, p.flow, 5, &b) == 0);
    struct sender_arg s = {&p, -2};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, send_after, &s) == 0);
    usleep(20000);
    memcpy(b, "first", 5);
    CHECK(machnet_commit(p.c, 5) == 0);
    CHECK(pthread_join(t, NULL) == 0);
    CHECK(s.rc == 0);
    unsigned char got[16];
    CHECK(srv_recv(&p, got, sizeof got) == 5);
    CHECK(memcmp(got, "first", 5) == 0);
    CHECK(srv_recv(&p, got, sizeof got) == 6);
    CHECK(memcmp(got, "second", 6) == 0);
    close_pair(&p);
    return 0;
}

/* Messages of every size from 1 B to 8 MiB: the client loans and commits, the server borrows
 * each with machnet_recv_zc_timeout, answers by loaning and copying the view (one copy), and
 * releases; the client borrows the echo. Byte-identical, in order, exactly once. */
static int t_every_size_round_trips(void) {
    struct pair p;
    CHECK(open_pair(&p, 30105) == 0);
    size_t sizes[64];
    int k = 0;
    for (size_t s = 1; s <= 4096; s = s * 3 + 1) sizes[k++] = s;
    for (size_t s = 5000; s < (8u << 20); s = s * 2 + 12345) sizes[k++] = s;
    sizes[k++] = (8u << 20) - 1;
    sizes[k++] = 8u << 20;
    for (int i = 0; i < k; i++) {
        size_t len = sizes[i];
        void *b;
        CHECK(machnet_loan(p.c, p.flow, len, &b) == 0);
        for (size_t j = 0; j < len; j++) ((unsigned char *)b)[j] = pat(j, (unsigned)i);
        CHECK(machnet_commit(p.c, len) == 0);

        const void *d;
        size_t n;
        MachnetFlow_t f;
        CHECK(machnet_recv_zc_timeout(p.srv, &d, &n, &f, 10000) == 1);
        CHECK(n == len);
        void *eb;
        CHECK(machnet_loan(p.srv, f, n, &eb) == 0);
        memcpy(eb, d, n);
        CHECK(machnet_release(p.srv) == 0);
        CHECK(machnet_commit(p.srv, n) == 0);

        CHECK(machnet_recv_zc_timeout(p.c, &d, &n, &f, 10000) == 1);
        CHECK(n == len);
        CHECK(f.src_port == p.flow.dst_port && f.dst_port == p.flow.src_port);
        for (size_t j = 0; j < len; j++) CHECK(((const unsigned char *)d)[j] == pat(j, (unsigned)i));
        CHECK(machnet_release(p.c) == 0);
    }
    const void *d;
    size_t n;
    MachnetFlow_t f;
    CHECK(machnet_recv_zc(p.c, &d, &n, &f) == 0);
    CHECK(machnet_recv_zc(p.srv, &d, &n, &f) == 0);
    close_pair(&p);
    return 0;
}

/* A view: released twice is EINVAL (no crash); a second recv_zc is EBUSY; copying receives
 * go on meanwhile. */
static int t_view_rules(void) {
    struct pair p;
    CHECK(open_pair(&p, 30106) == 0);
    CHECK(machnet_send(p.srv, p.sflow, "one", 3) == 0);
    CHECK(machnet_send(p.srv, p.sflow, "two", 3) == 0);
    const void *d, *d2;
    size_t n, n2;
    MachnetFlow_t f;
    CHECK(machnet_recv_zc_timeout(p.c, &d, &n, &f, 10000) == 1);
    CHECK(n == 3 && memcmp(d, "one", 3) == 0);
    FAILS(machnet_recv_zc(p.c, &d2, &n2, &f), EBUSY);
    FAILS(machnet_recv_zc_timeout(p.c, &d2, &n2, &f, 1000), EBUSY);
    char buf[8];
    CHECK(machnet_recv_timeout(p.c, buf, sizeof buf, &f, 10000) == 3);
    CHECK(memcmp(buf, "two", 3) == 0);
    CHECK(memcmp(d, "one", 3) == 0); /* still intact */
    CHECK(machnet_release(p.c) == 0);
    FAILS(machnet_release(p.c), EINVAL);
    FAILS(machnet_release(p.c), EINVAL);
    close_pair(&p);
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
        {"zc_argument_checks", t_argument_checks},
        {"zc_loan_commit_partial_cancel_bad_lengths", t_loan_commit_cancel},
        {"zc_loan_busy_on_the_holding_thread", t_loan_busy},
        {"zc_loan_holds_back_other_threads", t_loan_holds_back_other_threads},
        {"zc_every_size_round_trips", t_every_size_round_trips},
        {"zc_view_release_twice_busy_and_other_receives", t_view_rules},
    };
    int passed = 0, failed = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int r = cases[i].fn();
        report(cases[i].name, r, &passed, &failed);
    }
    return summary(passed, failed);
}
