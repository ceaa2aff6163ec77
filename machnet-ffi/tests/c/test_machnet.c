/*
 * C tests of libmachnet against real sidecars (started by ci/ffi.sh):
 *   MACHNET_TEST_SOCK       control socket of the sidecar this process attaches to (127.0.0.2)
 *   MACHNET_TEST_PEER_SOCK  control socket of the other sidecar (127.0.0.1), for a forked server
 *   MACHNET_TEST_LOCAL_IP   this sidecar's address      (default 127.0.0.2)
 *   MACHNET_TEST_PEER_IP    the other sidecar's address (default 127.0.0.1)
 *   MACHNET_TEST_ECHO_PORT  port of `machnet-echo server` on the other sidecar (default 888)
 *   MACHNET_TEST_BIN, MACHNET_TEST_UDP_BASE, MACHNET_TEST_DIR: the `machnet` binary, a free UDP
 *                           port range and a directory, to start (and kill) a third sidecar
 *
 * Every case prints "ok - NAME" or "not ok - NAME"; the last line is "c-tests: P passed, F failed".
 * Built with -Wall -Wextra -Werror; exits non-zero if any case failed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "machnet.h"
#include "check.h"

static const char *sock, *peer_sock, *local_ip, *peer_ip;
static uint16_t echo_port;
static void *ch; /* the main channel, connected to the echo server */
static MachnetFlow_t echo_flow;

static uint32_t ip_u32(const char *s) {
    unsigned a, b, c, d;
    if (sscanf(s, "%u.%u.%u.%u", &a, &b, &c, &d) != 4) return 0;
    return (a << 24) | (b << 16) | (c << 8) | d;
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void fill(uint8_t *buf, size_t len, unsigned seed) {
    for (size_t i = 0; i < len; i++) buf[i] = (uint8_t)(i * 31u + seed + (i >> 8) * 7u);
}

static int matches(const uint8_t *buf, size_t len, unsigned seed) {
    for (size_t i = 0; i < len; i++)
        if (buf[i] != (uint8_t)(i * 31u + seed + (i >> 8) * 7u)) return 0;
    return 1;
}

/* Sends `len` pattern bytes on the echo flow and checks the echo is byte-identical. */
static int echo_once(void *c, MachnetFlow_t flow, size_t len, unsigned seed) {
    uint8_t *out = malloc(len), *in = malloc(len);
    CHECK(out && in);
    fill(out, len, seed);
    CHECK(machnet_send(c, flow, out, len) == 0);
    MachnetFlow_t from;
    memset(&from, 0, sizeof from);
    ssize_t n = machnet_recv_timeout(c, in, len, &from, 10000);
    CHECK(n == (ssize_t)len);
    CHECK(memcmp(in, out, len) == 0);
    CHECK(from.src_ip == flow.dst_ip && from.src_port == flow.dst_port);
    CHECK(from.dst_ip == flow.src_ip && from.dst_port == flow.src_port);
    free(out);
    free(in);
    return 0;
}

/* ----- cases that run before machnet_init ----- */

static int t_version_and_constants(void) {
    const char *v = machnet_version();
    CHECK(v && strncmp(v, "machnet-rs ", 11) == 0);
    CHECK(MACHNET_ABI_VERSION == 1);
    CHECK(MACHNET_MSG_MAX_LEN == 8 * 1024 * 1024);
    CHECK(sizeof(MachnetFlow_t) == 12);
    struct MachnetFlow tagged = {1, 2, 3, 4}; /* the original's struct tag works too */
    MachnetFlow_t typed = tagged;
    CHECK(typed.dst_port == 4);
    return 0;
}

static int t_strerror(void) {
    CHECK(strstr(machnet_strerror(EMSGSIZE), "machnet_peek") != NULL);
    CHECK(strcmp(machnet_strerror(123456), "unknown error code") == 0);
    CHECK(strlen(machnet_strerror(0)) > 0);
    return 0;
}

static int t_attach_before_init_fails(void) {
    errno = 0;
    CHECK(machnet_attach() == NULL);
    CHECK(errno == ENOTCONN);
    CHECK(strstr(machnet_last_error(), "machnet_init") != NULL);
    return 0;
}

static int t_init_errors(void) {
    FAILS(machnet_init_at(NULL), EINVAL);
    FAILS(machnet_init_at("/nonexistent/machnet.sock"), ENOENT);
    CHECK(strlen(machnet_last_error()) > 0);
    return 0;
}

/* Runs machnet_init_at(path), which must fail with ENOENT; returns what it wrote on stderr
 * (captured in a temporary file; "" if nothing) in `out`. */
static int init_stderr(const char *path, char *out, size_t cap) {
    FILE *tmp = tmpfile();
    CHECK(tmp != NULL);
    fflush(stderr);
    int saved = dup(2);
    CHECK(saved >= 0 && dup2(fileno(tmp), 2) == 2);
    errno = 0;
    int r = machnet_init_at(path);
    int e = errno;
    CHECK(dup2(saved, 2) == 2);
    close(saved);
    CHECK(r == -1 && e == ENOENT); /* errno survives the logging */
    rewind(tmp);
    size_t n = fread(out, 1, cap - 1, tmp);
    out[n] = '\0';
    fclose(tmp);
    return 0;
}

/* machnet_init failures are silent on stderr unless MACHNET_LOG asks; machnet_last_error
 * always has the reason. */
static int t_init_failure_on_stderr_only_when_asked(void) {
    const char *bad = "/nonexistent/machnet-log-test.sock";
    char out[1024];
    unsetenv("MACHNET_LOG");
    CHECK(init_stderr(bad, out, sizeof out) == 0);
    CHECK(out[0] == '\0');
    CHECK(strstr(machnet_last_error(), bad) != NULL);
    setenv("MACHNET_LOG", "0", 1);
    CHECK(init_stderr(bad, out, sizeof out) == 0);
    CHECK(out[0] == '\0');
    setenv("MACHNET_LOG", "1", 1);
    CHECK(init_stderr(bad, out, sizeof out) == 0);
    unsetenv("MACHNET_LOG");
    CHECK(strstr(out, "libmachnet: machnet_init_at failed: ") == out);
    CHECK(strstr(out, machnet_last_error()) != NULL);
    CHECK(strstr(out, bad) != NULL);
    return 0;
}

static int t_init(void) {
    CHECK(machnet_init_at(sock) == 0);
    CHECK(machnet_init() == 0); /* already attached: nothing to do */
    ch = machnet_attach();
    CHECK(ch != NULL);
    return 0;
}

/* ----- argument checking ----- */

static int t_null_and_stale_contexts(void) {
    MachnetFlow_t f;
    memset(&f, 0, sizeof f);
    char buf[8];
    MachnetMsgHdr_t h;
    memset(&h, 0, sizeof h);
    FAILS(machnet_listen(NULL, local_ip, 1000), EINVAL);
    FAILS(machnet_connect(NULL, local_ip, peer_ip, echo_port, &f), EINVAL);
    FAILS(machnet_send(NULL, f, "x", 1), EINVAL);
    FAILS(machnet_sendmsg(NULL, &h), EINVAL);
    FAILS(machnet_recv(NULL, buf, sizeof buf, &f), EINVAL);
    FAILS(machnet_recv_timeout(NULL, buf, sizeof buf, &f, 0), EINVAL);
    FAILS(machnet_recvmsg(NULL, &h), EINVAL);
    FAILS(machnet_peek(NULL), EINVAL);
    FAILS(machnet_channel_fd(NULL), EINVAL);
    FAILS(machnet_interrupt(NULL), EINVAL);
    FAILS(machnet_close(NULL, f), EINVAL);
    FAILS(machnet_detach(NULL), EINVAL);
    /* A pointer that is not a channel context is refused, never dereferenced. */
    void *bogus = &f;
    FAILS(machnet_send(bogus, f, "x", 1), EBADF);
    FAILS(machnet_recv(bogus, buf, sizeof buf, &f), EBADF);
    FAILS(machnet_detach(bogus), EBADF);
    FAILS(machnet_listen((void *)(uintptr_t)0x10, local_ip, 1000), EBADF);
    return 0;
}

static int t_listen_errors(void) {
    FAILS(machnet_listen(ch, NULL, 7100), EINVAL);
    FAILS(machnet_listen(ch, "not-an-ip", 7100), EINVAL);
    FAILS(machnet_listen(ch, "1.2.3.4.5", 7100), EINVAL);
    FAILS(machnet_listen(ch, "10.255.255.1", 7100), EADDRNOTAVAIL);
    FAILS(machnet_listen(ch, local_ip, 0), EINVAL);
    CHECK(machnet_listen(ch, local_ip, 7100) == 0);
    /* The same channel twice: in use. */
    FAILS(machnet_listen(ch, local_ip, 7100), EADDRINUSE);
    /* Another channel of this process joins the port's listen group (docs/CHANNEL.md §2);
     * only another process would get EADDRINUSE. */
    void *other = machnet_attach();
    CHECK(other != NULL);
    CHECK(machnet_listen(other, "0.0.0.0", 7100) == 0);
    CHECK(machnet_detach(other) == 0);
    return 0;
}

static int t_connect_errors(void) {
    MachnetFlow_t f;
    FAILS(machnet_connect(ch, local_ip, peer_ip, echo_port, NULL), EINVAL);
    FAILS(machnet_connect(ch, local_ip, NULL, echo_port, &f), EINVAL);
    FAILS(machnet_connect(ch, local_ip, "300.1.1.1", echo_port, &f), EINVAL);
    FAILS(machnet_connect(ch, local_ip, "0.0.0.0", echo_port, &f), EINVAL);
    FAILS(machnet_connect(ch, local_ip, peer_ip, 0, &f), EINVAL);
    FAILS(machnet_connect(ch, "10.255.255.1", peer_ip, echo_port, &f), EADDRNOTAVAIL);
    /* Nobody listens on that port: refused promptly (the original slept up to 11 s). */
    double t0 = now_s();
    errno = 0;
    CHECK(machnet_connect(ch, local_ip, peer_ip, 4444, &f) == -1);
    CHECK(errno == ECONNREFUSED || errno == ETIMEDOUT);
    /* The code name every binding reports for this condition. */
    CHECK(strcmp(machnet_last_error_code(), errno == ECONNREFUSED ? "ERR_MACHNET_CONNECTION_REFUSED"
                                                                  : "ERR_MACHNET_TIMEOUT") == 0);
    CHECK(now_s() - t0 < 5.0);
    return 0;
}

static int t_connect_timeout(void) {
    MachnetFlow_t f;
    FAILS(machnet_connect_timeout(ch, local_ip, peer_ip, echo_port, NULL, 1000), EINVAL);
    FAILS(machnet_connect_timeout(NULL, local_ip, peer_ip, echo_port, &f, 1000), EINVAL);
    CHECK(machnet_connect_timeout(ch, local_ip, peer_ip, echo_port, &f, 5000) == 0);
    CHECK(f.dst_port == echo_port);
    CHECK(echo_once(ch, f, 33, 4) == 0);
    CHECK(machnet_close(ch, f) == 0);
    return 0;
}

static int t_connect(void) {
    memset(&echo_flow, 0, sizeof echo_flow);
    CHECK(machnet_connect(ch, local_ip, peer_ip, echo_port, &echo_flow) == 0);
    CHECK(echo_flow.src_ip == ip_u32(local_ip));
    CHECK(echo_flow.dst_ip == ip_u32(peer_ip));
    CHECK(echo_flow.dst_port == echo_port);
    CHECK(echo_flow.src_port != 0);
    return 0;
}

/* ----- data ----- */

static int t_echo_every_size_up_to_8_mib(void) {
    static const size_t sizes[] = {1, 2, 63, 64, 1000, 1472, 1500, 4096, 9000, 65536, 100000,
                                   1 << 20, (8 << 20) - 1, 8 << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        if (echo_once(ch, echo_flow, sizes[i], (unsigned)i)) {
            fprintf(stderr, "  size %zu\n", sizes[i]);
            return 1;
        }
    return 0;
}

static int t_send_errors(void) {
    char big_dummy = 0;
    FAILS(machnet_send(ch, echo_flow, NULL, 10), EINVAL);
    FAILS(machnet_send(ch, echo_flow, "x", 0), EINVAL);
    FAILS(machnet_send(ch, echo_flow, &big_dummy, (size_t)MACHNET_MSG_MAX_LEN + 1), EMSGSIZE);
    CHECK(strcmp(machnet_last_error_code(), "ERR_MACHNET_MESSAGE_TOO_LARGE") == 0);
    FAILS(machnet_send(ch, echo_flow, &big_dummy, SIZE_MAX), EMSGSIZE);
    MachnetFlow_t unknown = echo_flow;
    unknown.src_port ^= 0x5555;
    FAILS(machnet_send(ch, unknown, "x", 1), ENOTCONN);
    return 0;
}

static int t_flow_in_received_orientation_sends_too(void) {
    MachnetFlow_t swapped = {echo_flow.dst_ip, echo_flow.src_ip, echo_flow.dst_port,
                             echo_flow.src_port};
    uint8_t in[100], out[100];
    fill(out, sizeof out, 9);
    CHECK(machnet_send(ch, swapped, out, sizeof out) == 0);
    MachnetFlow_t from;
    CHECK(machnet_recv_timeout(ch, in, sizeof in, &from, 10000) == (ssize_t)sizeof in);
    CHECK(memcmp(in, out, sizeof in) == 0);
    return 0;
}

static int t_recv_nothing_waiting(void) {
    uint8_t buf[16];
    MachnetFlow_t f;
    CHECK(machnet_recv(ch, buf, sizeof buf, &f) == 0);
    CHECK(machnet_peek(ch) == 0);
    MachnetMsgHdr_t h;
    MachnetIovec_t v = {buf, sizeof buf};
    memset(&h, 0, sizeof h);
    h.msg_iov = &v;
    h.msg_iovlen = 1;
    CHECK(machnet_recvmsg(ch, &h) == 0);
    double t0 = now_s();
    CHECK(machnet_recv_timeout(ch, buf, sizeof buf, &f, 100) == 0);
    double dt = now_s() - t0;
    CHECK(dt >= 0.09 && dt < 2.0);
    FAILS(machnet_recv(ch, NULL, 16, &f), EINVAL);
    FAILS(machnet_recv(ch, buf, sizeof buf, NULL), EINVAL);
    return 0;
}

static int t_too_small_buffer_keeps_the_message(void) {
    uint8_t out[5000], in[5000], small[100];
    fill(out, sizeof out, 77);
    CHECK(machnet_send(ch, echo_flow, out, sizeof out) == 0);
    MachnetFlow_t f;
    /* Blocks until the echo is there, then refuses to truncate it. */
    FAILS(machnet_recv_timeout(ch, small, sizeof small, &f, 10000), EMSGSIZE);
    CHECK(machnet_peek(ch) == (ssize_t)sizeof out);
    FAILS(machnet_recv(ch, small, sizeof small, &f), EMSGSIZE);
    /* Same errno as a message too large to send; the code name tells them apart. */
    CHECK(strcmp(machnet_last_error_code(), "ERR_MACHNET_BUFFER_TOO_SMALL") == 0);
    FAILS(machnet_recv(ch, NULL, 0, &f), EMSGSIZE);
    CHECK(machnet_recv(ch, in, sizeof in, &f) == (ssize_t)sizeof in);
    CHECK(memcmp(in, out, sizeof in) == 0);
    CHECK(machnet_peek(ch) == 0);
    return 0;
}

static int t_sendmsg_recvmsg_scatter_gather(void) {
    enum { A = 1, B = 1000, C = 70000, TOTAL = A + B + C };
    uint8_t *out = malloc(TOTAL), *in = malloc(TOTAL + 10);
    CHECK(out && in);
    fill(out, TOTAL, 5);
    MachnetIovec_t tx[3] = {{out, A}, {out + A, B}, {out + A + B, C}};
    MachnetMsgHdr_t h;
    memset(&h, 0, sizeof h);
    h.msg_size = TOTAL;
    h.flow_info = echo_flow;
    h.msg_iov = tx;
    h.msg_iovlen = 3;
    CHECK(machnet_sendmsg(ch, &h) == 0);
    /* Too little room: refused, size reported, message kept. */
    MachnetIovec_t small[2] = {{in, 10}, {in + 10, 20}};
    MachnetMsgHdr_t r;
    memset(&r, 0, sizeof r);
    r.msg_iov = small;
    r.msg_iovlen = 2;
    while (machnet_peek(ch) == 0) {
        MachnetFlow_t f;
        uint8_t b[1];
        CHECK(machnet_recv_timeout(ch, b, 0, &f, 10000) == -1 && errno == EMSGSIZE);
    }
    FAILS(machnet_recvmsg(ch, &r), EMSGSIZE);
    CHECK(r.msg_size == TOTAL);
    /* Uneven pieces, one empty, room to spare. */
    MachnetIovec_t rx[4] = {{in, 7}, {NULL, 0}, {in + 7, 40000}, {in + 40007, TOTAL + 3 - 40007}};
    memset(&r, 0, sizeof r);
    r.msg_iov = rx;
    r.msg_iovlen = 4;
    CHECK(machnet_recvmsg(ch, &r) == 1);
    CHECK(r.msg_size == TOTAL);
    CHECK(memcmp(in, out, TOTAL) == 0);
    CHECK(r.flow_info.src_ip == echo_flow.dst_ip && r.flow_info.dst_port == echo_flow.src_port);
    free(out);
    free(in);
    return 0;
}

static int t_sendmsg_errors(void) {
    uint8_t b[16] = {0};
    MachnetIovec_t v = {b, sizeof b};
    MachnetMsgHdr_t h;
    memset(&h, 0, sizeof h);
    h.flow_info = echo_flow;
    FAILS(machnet_sendmsg(ch, NULL), EINVAL);
    h.msg_size = 0; /* empty */
    FAILS(machnet_sendmsg(ch, &h), EINVAL);
    h.msg_size = 16; /* iov NULL */
    h.msg_iovlen = 1;
    FAILS(machnet_sendmsg(ch, &h), EINVAL);
    h.msg_iov = &v;
    h.msg_size = 17; /* mismatch */
    FAILS(machnet_sendmsg(ch, &h), EINVAL);
    h.msg_size = 16;
    h.flags = 1;
    FAILS(machnet_sendmsg(ch, &h), EINVAL);
    h.flags = 0;
    MachnetIovec_t nullbase = {NULL, 16};
    h.msg_iov = &nullbase;
    FAILS(machnet_sendmsg(ch, &h), EINVAL);
    MachnetIovec_t huge[2] = {{b, (size_t)MACHNET_MSG_MAX_LEN}, {b, 1}};
    h.msg_iov = huge;
    h.msg_iovlen = 2;
    h.msg_size = 0;
    FAILS(machnet_sendmsg(ch, &h), EMSGSIZE);
    MachnetIovec_t wrap[2] = {{b, SIZE_MAX}, {b, 2}};
    h.msg_iov = wrap;
    FAILS(machnet_sendmsg(ch, &h), EMSGSIZE);
    return 0;
}

static int t_recvmsg_errors(void) {
    MachnetMsgHdr_t h;
    memset(&h, 0, sizeof h);
    FAILS(machnet_recvmsg(ch, NULL), EINVAL);
    h.msg_iovlen = 2; /* msg_iov NULL */
    FAILS(machnet_recvmsg(ch, &h), EINVAL);
    MachnetIovec_t v = {NULL, 10}; /* base NULL with a length */
    h.msg_iov = &v;
    h.msg_iovlen = 1;
    FAILS(machnet_recvmsg(ch, &h), EINVAL);
    return 0;
}

static int t_sendmmsg(void) {
    uint8_t m[3][300];
    MachnetIovec_t v[3];
    MachnetMsgHdr_t h[3];
    memset(h, 0, sizeof h);
    for (int i = 0; i < 3; i++) {
        fill(m[i], sizeof m[i], 100 + (unsigned)i);
        v[i].base = m[i];
        v[i].len = 100 * (size_t)(i + 1);
        h[i].msg_size = (uint32_t)v[i].len;
        h[i].flow_info = echo_flow;
        h[i].msg_iov = &v[i];
        h[i].msg_iovlen = 1;
    }
    CHECK(machnet_sendmmsg(ch, h, 3) == 3);
    for (int i = 0; i < 3; i++) {
        uint8_t in[300];
        MachnetFlow_t f;
        CHECK(machnet_recv_timeout(ch, in, sizeof in, &f, 10000) == 100 * (i + 1));
        CHECK(memcmp(in, m[i], (size_t)(100 * (i + 1))) == 0); /* in order */
    }
    h[1].msg_size = 1; /* the second one is invalid: one sent, errno tells why */
    errno = 0;
    CHECK(machnet_sendmmsg(ch, h, 3) == 1);
    CHECK(errno == EINVAL);
    uint8_t in[300];
    MachnetFlow_t f;
    CHECK(machnet_recv_timeout(ch, in, sizeof in, &f, 10000) == 100);
    FAILS(machnet_sendmmsg(ch, NULL, 2), EINVAL);
    FAILS(machnet_sendmmsg(ch, h, -1), EINVAL);
    CHECK(machnet_sendmmsg(ch, NULL, 0) == 0);
    return 0;
}

static int t_channel_fd_is_pollable(void) {
    int fd = machnet_channel_fd(ch);
    CHECK(fd >= 0);
    uint8_t buf[64], out[64];
    MachnetFlow_t f;
    CHECK(machnet_recv(ch, buf, sizeof buf, &f) == 0); /* arms the fd */
    fill(out, sizeof out, 3);
    CHECK(machnet_send(ch, echo_flow, out, sizeof out) == 0);
    ssize_t n = 0;
    for (int tries = 0; tries < 100 && n == 0; tries++) {
        struct pollfd p = {fd, POLLIN, 0};
        CHECK(poll(&p, 1, 10000) == 1); /* readiness may be spurious: receive until a message */
        n = machnet_recv(ch, buf, sizeof buf, &f);
        CHECK(n >= 0);
    }
    CHECK(n == (ssize_t)sizeof out && memcmp(buf, out, sizeof out) == 0);
    return 0;
}

struct blocked {
    void *ch;
    ssize_t ret;
    int err;
    volatile int done;
};

static void *blocked_recv(void *arg) {
    struct blocked *b = arg;
    uint8_t buf[16];
    MachnetFlow_t f;
    b->ret = machnet_recv_timeout(b->ch, buf, sizeof buf, &f, -1);
    b->err = errno;
    __atomic_store_n(&b->done, 1, __ATOMIC_SEQ_CST);
    return NULL;
}

static int t_interrupt_wakes_a_blocked_receive(void) {
    struct blocked b = {ch, 0, 0, 0};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, blocked_recv, &b) == 0);
    /* Interrupt until the receiver returns (it may not have blocked yet on the first try). */
    double t0 = now_s();
    while (!__atomic_load_n(&b.done, __ATOMIC_SEQ_CST) && now_s() - t0 < 10) {
        CHECK(machnet_interrupt(ch) == 0);
        usleep(10000);
    }
    pthread_join(t, NULL);
    CHECK(b.ret == -1 && b.err == EINTR);
    return 0;
}

/* One thread receives while another sends: a blocked receive must not stall the sender. */
struct pump {
    void *ch;
    MachnetFlow_t flow;
    int count;
    size_t len;
    int bad;
};

static void *pump_send(void *arg) {
    struct pump *p = arg;
    uint8_t *buf = malloc(p->len);
    for (int i = 0; i < p->count && buf; i++) {
        fill(buf, p->len, (unsigned)i);
        if (machnet_send(p->ch, p->flow, buf, p->len) != 0) {
            p->bad = 1;
            break;
        }
    }
    free(buf);
    return NULL;
}

static int t_threads_share_a_channel(void) {
    struct pump p = {ch, echo_flow, 3000, 20000, 0};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, pump_send, &p) == 0);
    uint8_t *buf = malloc(p.len);
    CHECK(buf);
    int got = 0;
    for (; got < p.count; got++) {
        MachnetFlow_t f;
        ssize_t n = machnet_recv_timeout(ch, buf, p.len, &f, 10000);
        if (n != (ssize_t)p.len || !matches(buf, p.len, (unsigned)got)) break;
    }
    pthread_join(t, NULL);
    free(buf);
    CHECK(!p.bad);
    CHECK(got == p.count);
    return 0;
}

/* A server in a child process on the other sidecar: listen, accept, echo reversed, then wait
 * for the parent's word on `done_fd` before detaching. */
static int child_server(uint16_t port, int done_fd) {
    if (machnet_init_at(peer_sock) != 0) return 10;
    void *c = machnet_attach();
    if (!c) return 11;
    if (machnet_listen(c, peer_ip, port) != 0) return 12;
    printf("READY\n");
    fflush(stdout);
    uint8_t buf[4096];
    for (int i = 0; i < 5; i++) {
        MachnetFlow_t f;
        ssize_t n = machnet_recv_timeout(c, buf, sizeof buf, &f, 10000);
        if (n <= 0) {
            fprintf(stderr, "  child: message %d: recv returned %zd (%s)\n", i, n,
                    n ? machnet_last_error() : "timeout");
            return 13;
        }
        for (ssize_t k = 0; k < n / 2; k++) {
            uint8_t x = buf[k];
            buf[k] = buf[n - 1 - k];
            buf[n - 1 - k] = x;
        }
        if (machnet_send(c, f, buf, (size_t)n) != 0) return 14;
    }
    char done;
    if (read(done_fd, &done, 1) != 1) return 16;
    return machnet_detach(c) == 0 ? 0 : 15;
}

static int t_listen_and_accept_in_another_process(void) {
    const uint16_t port = 7200;
    int pipefd[2], donefd[2];
    CHECK(pipe(pipefd) == 0 && pipe(donefd) == 0);
    fflush(stdout);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        close(pipefd[0]);
        close(donefd[1]);
        dup2(pipefd[1], 1);
        _exit(child_server(port, donefd[0]));
    }
    close(pipefd[1]);
    close(donefd[0]);
    char ready[8] = {0};
    ssize_t r = read(pipefd[0], ready, 6);
    close(pipefd[0]);
    CHECK(r == 6 && strncmp(ready, "READY\n", 6) == 0);
    void *c = machnet_attach();
    CHECK(c != NULL);
    MachnetFlow_t f;
    CHECK(machnet_connect(c, "0.0.0.0", peer_ip, port, &f) == 0);
    for (int i = 0; i < 5; i++) {
        uint8_t out[1000], in[1000];
        size_t len = 1 + (size_t)i * 200;
        fill(out, len, (unsigned)i);
        CHECK(machnet_send(c, f, out, len) == 0);
        MachnetFlow_t from;
        double t0 = now_s();
        ssize_t n = machnet_recv_timeout(c, in, sizeof in, &from, 10000);
        if (n != (ssize_t)len)
            fprintf(stderr, "  round %d: recv returned %zd after %.3f s\n", i, n, now_s() - t0);
        CHECK(n == (ssize_t)len);
        for (size_t k = 0; k < len; k++) CHECK(in[k] == out[len - 1 - k]);
    }
    CHECK(write(donefd[1], "x", 1) == 1);
    close(donefd[1]);
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK(machnet_detach(c) == 0);
    return 0;
}

static int t_close_a_flow(void) {
    void *c = machnet_attach();
    CHECK(c != NULL);
    MachnetFlow_t f;
    CHECK(machnet_connect(c, local_ip, peer_ip, echo_port, &f) == 0);
    CHECK(echo_once(c, f, 10, 1) == 0);
    CHECK(machnet_close(c, f) == 0);
    errno = 0;
    CHECK(machnet_send(c, f, "x", 1) == -1);
    CHECK(errno == EPIPE || errno == ENOTCONN);
    MachnetFlow_t unknown = f;
    unknown.dst_port = 1;
    FAILS(machnet_close(c, unknown), ENOTCONN);
    CHECK(machnet_detach(c) == 0);
    return 0;
}

static int t_detach(void) {
    void *c = machnet_attach();
    CHECK(c != NULL);
    struct blocked b = {c, 0, 0, 0};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, blocked_recv, &b) == 0);
    CHECK(machnet_detach(c) == 0);
    pthread_join(t, NULL);
    CHECK(b.ret == -1 && b.err == EBADF); /* woken (or refused) with EBADF, never hung */
    MachnetFlow_t f;
    memset(&f, 0, sizeof f);
    uint8_t buf[4];
    FAILS(machnet_detach(c), EBADF);
    FAILS(machnet_send(c, f, "x", 1), EBADF);
    FAILS(machnet_recv(c, buf, sizeof buf, &f), EBADF);
    FAILS(machnet_channel_fd(c), EBADF);
    /* A new channel gets a new context: the stale one stays invalid. */
    void *d = machnet_attach();
    CHECK(d != NULL && d != c);
    FAILS(machnet_peek(c), EBADF);
    CHECK(machnet_detach(d) == 0);
    return 0;
}

/* Starts a third sidecar (127.0.0.3, control socket `path`) and points machnet_init_at at it.
 * Returns its pid, or -1. */
static pid_t start_doomed_sidecar(const char *path) {
    const char *bin = getenv("MACHNET_TEST_BIN"), *base = getenv("MACHNET_TEST_UDP_BASE");
    if (!bin || !base) return -1;
    char uid[32];
    snprintf(uid, sizeof uid, "%d", (int)getuid());
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlives this test */
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0) dup2(devnull, 2);
        execl(bin, bin, "--local-ip", "127.0.0.3", "--control-socket", path, "--allow-user", uid,
              "--udp-port-base", base, "--udp-port-count", "8", "--stats-interval", "0",
              (char *)NULL);
        _exit(127);
    }
    int up = 0;
    for (int i = 0; i < 400 && !up; i++) {
        up = access(path, F_OK) == 0 && machnet_init_at(path) == 0;
        if (!up) usleep(25000); /* waiting for a process to come up; nothing to wait on */
    }
    if (!up) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        return -1;
    }
    return pid;
}

/* A third sidecar started here and killed under a blocked receive: every call ends with an
 * error instead of hanging. Runs last: it re-points machnet_init_at at that sidecar. */
static int t_sidecar_gone(void) {
    const char *dir = getenv("MACHNET_TEST_DIR");
    CHECK(dir);
    char path[512];
    snprintf(path, sizeof path, "%s/doomed-%d.sock", dir, (int)getpid());
    pid_t pid = start_doomed_sidecar(path);
    CHECK(pid > 0);
    void *c = machnet_attach();
    CHECK(c != NULL);
    CHECK(machnet_listen(c, "127.0.0.3", 7500) == 0);
    struct blocked b = {c, 0, 0, 0};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, blocked_recv, &b) == 0);
    CHECK(kill(pid, SIGKILL) == 0);
    int status;
    CHECK(waitpid(pid, &status, 0) == pid);
    double t0 = now_s();
    pthread_join(t, NULL);
    CHECK(now_s() - t0 < 5.0);
    CHECK(b.ret == -1 && b.err == ECONNRESET);
    uint8_t buf[8];
    MachnetFlow_t f;
    memset(&f, 0, sizeof f);
    FAILS(machnet_recv_timeout(c, buf, sizeof buf, &f, 1000), ECONNRESET);
    errno = 0;
    CHECK(machnet_listen(c, "127.0.0.3", 7501) == -1 && errno == ECONNRESET);
    errno = 0;
    CHECK(machnet_attach() == NULL && errno == ECONNRESET);
    errno = 0;
    CHECK(machnet_detach(c) == -1 && errno == ECONNRESET); /* gone, but the context is freed */
    FAILS(machnet_detach(c), EBADF);
    unlink(path);
    return 0;
}

/* Issue 14: once the sidecar process is dead, a send into a ring with room fails (ECONNRESET)
 * instead of returning 0 and losing the message; so do connect, listen and close. Nothing
 * received in between (which used to be how a dead sidecar was noticed). Runs last. */
static int t_send_after_sidecar_death_fails(void) {
    const char *dir = getenv("MACHNET_TEST_DIR");
    CHECK(dir);
    char path[512];
    snprintf(path, sizeof path, "%s/doomed-send-%d.sock", dir, (int)getpid());
    pid_t pid = start_doomed_sidecar(path);
    CHECK(pid > 0);
    void *c = machnet_attach();
    CHECK(c != NULL);
    MachnetFlow_t f;
    CHECK(machnet_connect(c, "127.0.0.3", peer_ip, echo_port, &f) == 0);
    CHECK(echo_once(c, f, 100, 14) == 0);
    CHECK(kill(pid, SIGKILL) == 0);
    int status;
    CHECK(waitpid(pid, &status, 0) == pid);
    FAILS(machnet_send(c, f, "lost?", 5), ECONNRESET);
    MachnetIovec_t iov = {(void *)"lost?", 5};
    MachnetMsgHdr_t h;
    memset(&h, 0, sizeof h);
    h.msg_size = 5;
    h.flow_info = f;
    h.msg_iov = &iov;
    h.msg_iovlen = 1;
    FAILS(machnet_sendmsg(c, &h), ECONNRESET);
    errno = 0;
    CHECK(machnet_sendmmsg(c, &h, 1) == 0 && errno == ECONNRESET);
    MachnetFlow_t f2;
    FAILS(machnet_connect(c, "127.0.0.3", peer_ip, echo_port, &f2), ECONNRESET);
    FAILS(machnet_listen(c, "127.0.0.3", 7600), ECONNRESET);
    FAILS(machnet_close(c, f), ECONNRESET);
    FAILS(machnet_detach(c), ECONNRESET); /* gone, but the context is freed */
    unlink(path);
    return 0;
}

int cxx_header_check(void); /* header_check.cpp */

static int t_cxx_translation_unit(void) {
    CHECK(cxx_header_check() == 0);
    return 0;
}

/* A channel belongs to the sidecar it was attached to, whatever machnet_init_at said since. */
static int t_channel_keeps_its_sidecar_after_reinit(void) {
    void *c = machnet_attach(); /* on `sock`'s sidecar, whose address is local_ip */
    CHECK(c != NULL);
    CHECK(machnet_init_at(peer_sock) == 0); /* later attaches would go to the peer */
    int own = machnet_listen(c, local_ip, 4242);
    int other = machnet_listen(c, peer_ip, 4243);
    int other_errno = errno;
    CHECK(machnet_init_at(sock) == 0);
    CHECK(own == 0);
    CHECK(other == -1 && other_errno == EADDRNOTAVAIL);
    CHECK(machnet_detach(c) == 0);
    return 0;
}

/* A peer that detaches its channel with abort resets our flow: sends fail soon after. */
static int t_peer_detach_abort_resets_the_flow(void) {
    CHECK(machnet_init_at(peer_sock) == 0);
    void *srv = machnet_attach();
    CHECK(machnet_init_at(sock) == 0);
    CHECK(srv != NULL);
    CHECK(machnet_listen(srv, peer_ip, 4300) == 0);
    void *c = machnet_attach();
    CHECK(c != NULL);
    MachnetFlow_t f;
    CHECK(machnet_connect(c, local_ip, peer_ip, 4300, &f) == 0);
    CHECK(machnet_send(c, f, "ping", 4) == 0);
    char buf[16];
    MachnetFlow_t from;
    CHECK(machnet_recv_timeout(srv, buf, sizeof buf, &from, 10000) == 4);
    CHECK(machnet_detach_abort(srv) == 0);
    FAILS(machnet_detach_abort(srv), EBADF);
    int reset = 0;
    for (int i = 0; i < 200 && !reset; i++) {
        (void)machnet_recv_timeout(c, buf, sizeof buf, &from, 50);
        errno = 0;
        if (machnet_send(c, f, "more", 4) == -1) {
            CHECK(errno == ECONNRESET || errno == ENOTCONN);
            reset = 1;
        }
    }
    CHECK(reset);
    CHECK(machnet_detach(c) == 0);
    return 0;
}

/* A peer that sends and at once detaches (gracefully, as an exiting app does): every message
 * arrives, in order and intact, then the flow ends (sends fail with ENOTCONN, or EPIPE once the
 * receive has closed our side), never with a reset. */
static int t_peer_detach_delivers_then_closes(void) {
    static const size_t sizes[] = {1, 9000, 1 << 20};
    enum { N = sizeof sizes / sizeof sizes[0] };
    CHECK(machnet_init_at(peer_sock) == 0);
    void *srv = machnet_attach();
    CHECK(machnet_init_at(sock) == 0);
    CHECK(srv != NULL);
    CHECK(machnet_listen(srv, peer_ip, 4301) == 0);
    void *c = machnet_attach();
    CHECK(c != NULL);
    MachnetFlow_t f, sf;
    CHECK(machnet_connect(c, local_ip, peer_ip, 4301, &f) == 0);
    CHECK(machnet_send(c, f, "ping", 4) == 0);
    uint8_t *buf = malloc(1 << 20);
    CHECK(buf);
    CHECK(machnet_recv_timeout(srv, buf, 16, &sf, 10000) == 4);
    for (int i = 0; i < N; i++) {
        fill(buf, sizes[i], (unsigned)i);
        CHECK(machnet_send(srv, sf, buf, sizes[i]) == 0);
    }
    CHECK(machnet_detach(srv) == 0);
    for (int i = 0; i < N; i++) {
        MachnetFlow_t from;
        memset(buf, 0, sizes[i]);
        CHECK(machnet_recv_timeout(c, buf, 1 << 20, &from, 10000) == (ssize_t)sizes[i]);
        CHECK(matches(buf, sizes[i], (unsigned)i));
    }
    int closed = 0;
    for (int i = 0; i < 200 && !closed; i++) {
        MachnetFlow_t from;
        CHECK(machnet_recv_timeout(c, buf, 1 << 20, &from, 50) == 0);
        errno = 0;
        if (machnet_send(c, f, "more", 4) == -1) {
            CHECK(errno == ENOTCONN || errno == EPIPE);
            closed = 1;
        }
    }
    free(buf);
    CHECK(closed);
    CHECK(machnet_detach(c) == 0);
    return 0;
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    sock = env("MACHNET_TEST_SOCK", NULL);
    peer_sock = env("MACHNET_TEST_PEER_SOCK", NULL);
    local_ip = env("MACHNET_TEST_LOCAL_IP", "127.0.0.2");
    peer_ip = env("MACHNET_TEST_PEER_IP", "127.0.0.1");
    echo_port = (uint16_t)atoi(env("MACHNET_TEST_ECHO_PORT", "888"));
    if (!sock || !peer_sock) {
        fprintf(stderr, "set MACHNET_TEST_SOCK and MACHNET_TEST_PEER_SOCK (ci/ffi.sh does)\n");
        return 2;
    }
    struct {
        const char *name;
        int (*fn)(void);
        int needs_channel;
    } cases[] = {
        {"version_and_constants", t_version_and_constants, 0},
        {"strerror", t_strerror, 0},
        {"cxx_translation_unit", t_cxx_translation_unit, 0},
        {"attach_before_init_fails", t_attach_before_init_fails, 0},
        {"init_errors", t_init_errors, 0},
        {"init_failure_on_stderr_only_when_asked", t_init_failure_on_stderr_only_when_asked, 0},
        {"init", t_init, 0},
        /* forks: runs while this process has no other threads yet */
        {"listen_and_accept_in_another_process", t_listen_and_accept_in_another_process, 1},
        {"null_and_stale_contexts", t_null_and_stale_contexts, 1},
        {"listen_errors", t_listen_errors, 1},
        {"connect_errors", t_connect_errors, 1},
        {"connect_timeout", t_connect_timeout, 1},
        {"connect", t_connect, 1},
        {"echo_every_size_up_to_8_mib", t_echo_every_size_up_to_8_mib, 2},
        {"send_errors", t_send_errors, 2},
        {"flow_in_received_orientation_sends_too", t_flow_in_received_orientation_sends_too, 2},
        {"recv_nothing_waiting", t_recv_nothing_waiting, 2},
        {"too_small_buffer_keeps_the_message", t_too_small_buffer_keeps_the_message, 2},
        {"sendmsg_recvmsg_scatter_gather", t_sendmsg_recvmsg_scatter_gather, 2},
        {"sendmsg_errors", t_sendmsg_errors, 2},
        {"recvmsg_errors", t_recvmsg_errors, 1},
        {"sendmmsg", t_sendmmsg, 2},
        {"channel_fd_is_pollable", t_channel_fd_is_pollable, 2},
        {"interrupt_wakes_a_blocked_receive", t_interrupt_wakes_a_blocked_receive, 2},
        {"threads_share_a_channel", t_threads_share_a_channel, 2},
        {"channel_keeps_its_sidecar_after_reinit", t_channel_keeps_its_sidecar_after_reinit, 1},
        {"peer_detach_abort_resets_the_flow", t_peer_detach_abort_resets_the_flow, 1},
        {"peer_detach_delivers_then_closes", t_peer_detach_delivers_then_closes, 1},
        {"close_a_flow", t_close_a_flow, 1},
        {"detach", t_detach, 1},
        {"sidecar_gone", t_sidecar_gone, 0},
        {"send_after_sidecar_death_fails", t_send_after_sidecar_death_fails, 0},
    };
    int passed = 0, failed = 0, have_channel = 0, have_flow = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int r;
        if (cases[i].needs_channel == 1 && !have_channel) r = 1;
        else if (cases[i].needs_channel == 2 && !have_flow) r = 1;
        else r = cases[i].fn();
        if (cases[i].fn == t_init && r == 0) have_channel = 1;
        if (cases[i].fn == t_connect && r == 0) have_flow = 1;
        report(cases[i].name, r, &passed, &failed);
    }
    if (ch) machnet_detach(ch);
    return summary(passed, failed);
}
