/*
 * Which control socket machnet_init picks: $MACHNET_SOCKET if set; else our default
 * /run/machnet/machnet.sock; else, when nothing exists there, the original Machnet's
 * /var/run/machnet/machnet_ctrl.sock.
 *
 * Usage: init_paths SIDECAR_SOCKET. It creates and removes symbolic links to SIDECAR_SOCKET
 * at those two paths, so it must run where /run is private and writable: ci/ffi.sh starts it
 * under `unshare -rm` on a fresh tmpfs mounted at /run, and sets MACHNET_TEST_PRIVATE_RUN=1.
 * /var/run must lead to /run (a symbolic link, as on current distributions).
 *
 * Every case runs in a forked child (a fresh machnet_init). Prints "ok - NAME" or
 * "not ok - NAME" and a last line "c-tests: P passed, F failed"; exits non-zero on failure.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "machnet.h"
#include "check.h"

#define OURS "/run/machnet/machnet.sock"
#define ORIGINAL "/var/run/machnet/machnet_ctrl.sock"

static const char *sidecar;

/* Puts a link to `target` at `path` (NULL target: nothing at `path`). */
static int place(const char *path, const char *target) {
    if (unlink(path) != 0 && errno != ENOENT) return -1;
    return target ? symlink(target, path) : 0;
}

/* machnet_init attaches (and a channel opens) through whatever is at the path it picked. */
static int attaches(void) {
    CHECK(machnet_init() == 0);
    void *ch = machnet_attach();
    CHECK(ch != NULL);
    CHECK(machnet_detach(ch) == 0);
    return 0;
}

static int t_nothing_anywhere_names_both_paths(void) {
    CHECK(place(OURS, NULL) == 0 && place(ORIGINAL, NULL) == 0);
    errno = 0;
    CHECK(machnet_init() == -1);
    CHECK(errno == ENOENT);
    CHECK(strstr(machnet_last_error(), OURS) != NULL);
    CHECK(strstr(machnet_last_error(), ORIGINAL) != NULL);
    CHECK(strstr(machnet_last_error(), "MACHNET_SOCKET") != NULL);
    return 0;
}

static int t_original_path_when_ours_is_missing(void) {
    CHECK(place(OURS, NULL) == 0 && place(ORIGINAL, sidecar) == 0);
    return attaches();
}

static int t_ours_first(void) {
    /* The original's path holds a dangling link: using it would fail. */
    CHECK(place(OURS, sidecar) == 0 && place(ORIGINAL, "/nonexistent/machnet_ctrl.sock") == 0);
    return attaches();
}

static int t_env_wins_without_fallback(void) {
    CHECK(place(OURS, NULL) == 0 && place(ORIGINAL, sidecar) == 0);
    setenv("MACHNET_SOCKET", "/nonexistent/env.sock", 1);
    errno = 0;
    CHECK(machnet_init() == -1);
    CHECK(errno == ENOENT);
    CHECK(strstr(machnet_last_error(), "/nonexistent/env.sock") != NULL);
    unsetenv("MACHNET_SOCKET");
    return 0;
}

static int t_env_set_is_used(void) {
    CHECK(place(OURS, NULL) == 0 && place(ORIGINAL, NULL) == 0);
    setenv("MACHNET_SOCKET", sidecar, 1);
    int r = attaches();
    unsetenv("MACHNET_SOCKET");
    return r;
}

/* Something that is not a live socket at our path (a stale file) is reported, not skipped:
 * the fallback is for "no socket there" only. */
static int t_stale_file_at_ours_is_an_error(void) {
    CHECK(place(OURS, NULL) == 0 && place(ORIGINAL, sidecar) == 0);
    FILE *f = fopen(OURS, "w");
    CHECK(f != NULL);
    fclose(f);
    errno = 0;
    CHECK(machnet_init() == -1);
    CHECK(errno == ECONNREFUSED);
    CHECK(strstr(machnet_last_error(), OURS) != NULL);
    return 0;
}

/* Runs `fn` in a child process (a fresh library state). */
static int in_child(int (*fn)(void)) {
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) _exit(fn() ? 1 : 0);
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid) return 1;
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}

int main(int argc, char **argv) {
    const char *private_run = getenv("MACHNET_TEST_PRIVATE_RUN");
    if (argc != 2 || !private_run || strcmp(private_run, "1") != 0) {
        fprintf(stderr, "usage: MACHNET_TEST_PRIVATE_RUN=1 init_paths SIDECAR_SOCKET, on a "
                        "private /run (ci/ffi.sh runs it under unshare -rm)\n");
        return 2;
    }
    sidecar = argv[1];
    unsetenv("MACHNET_SOCKET");
    unsetenv("MACHNET_LOG");
    if (mkdir("/run/machnet", 0755) != 0 && errno != EEXIST) {
        perror("mkdir /run/machnet");
        return 2;
    }
    struct {
        const char *name;
        int (*fn)(void);
    } cases[] = {
        {"init_paths: nothing anywhere names both paths", t_nothing_anywhere_names_both_paths},
        {"init_paths: the original's path when ours is missing", t_original_path_when_ours_is_missing},
        {"init_paths: ours before the original's", t_ours_first},
        {"init_paths: MACHNET_SOCKET wins, no fallback", t_env_wins_without_fallback},
        {"init_paths: MACHNET_SOCKET is used", t_env_set_is_used},
        {"init_paths: a stale file at ours is an error", t_stale_file_at_ours_is_an_error},
    };
    int passed = 0, failed = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int r = in_child(cases[i].fn);
        report(cases[i].name, r, &passed, &failed);
    }
    return summary(passed, failed);
}
