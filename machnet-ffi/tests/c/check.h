/*
 * What the C tests share: CHECK / FAILS (a case returns 1 on the first failed check, after
 * printing where and why), env(), and the "ok - NAME" / "c-tests: P passed, F failed" report
 * ci/ffi.sh counts. Include after <errno.h>, <stdio.h>, <stdlib.h> and "machnet.h".
 */
#ifndef MACHNET_TEST_CHECK_H
#define MACHNET_TEST_CHECK_H

#define CHECK(c)                                                                           \
    do {                                                                                   \
        if (!(c)) {                                                                        \
            int e_ = errno;                                                                \
            fprintf(stderr, "  %s:%d: CHECK(%s) failed (errno %d: %s; last error: %s)\n", \
                    __FILE__, __LINE__, #c, e_, machnet_strerror(e_), machnet_last_error()); \
            return 1;                                                                      \
        }                                                                                  \
    } while (0)

/* A call that must fail with -1 (or NULL) and errno `code`. */
#define FAILS(call, code)                                                                  \
    do {                                                                                   \
        errno = 0;                                                                         \
        long r_ = (long)(call);                                                            \
        int e_ = errno;                                                                    \
        if (r_ != -1 || e_ != (code)) {                                                    \
            fprintf(stderr, "  %s:%d: %s returned %ld errno %d (%s), expected -1 errno %d\n", \
                    __FILE__, __LINE__, #call, r_, e_, machnet_strerror(e_), (code));      \
            return 1;                                                                      \
        }                                                                                  \
    } while (0)

/* The environment variable `name`, or `dflt` when it is unset or empty. */
static inline const char *env(const char *name, const char *dflt) {
    const char *v = getenv(name);
    return v && *v ? v : dflt;
}

/* Prints one case's result line and counts it. */
static inline void report(const char *name, int failed_case, int *passed, int *failed) {
    printf("%s - %s\n", failed_case ? "not ok" : "ok", name);
    fflush(stdout);
    failed_case ? (*failed)++ : (*passed)++;
}

/* Prints the summary line; the exit status of a test program. */
static inline int summary(int passed, int failed) {
    printf("c-tests: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}

#endif
