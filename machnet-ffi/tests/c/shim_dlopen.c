/*
 * The library loads under the original Machnet's name: its Rust, JS and C# bindings
 * dlopen("libmachnet_shim.so"). Not linked against libmachnet: it dlopen()s
 * libmachnet_shim.so (found through LD_LIBRARY_PATH), then attaches to the sidecar at
 * $MACHNET_SOCKET through the symbols it finds there.
 *
 * Prints "ok - NAME" / "not ok - NAME" and "c-tests: P passed, F failed"; exits non-zero on
 * failure.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

int main(void) {
    int failed = 0;
    void *lib = dlopen("libmachnet_shim.so", RTLD_NOW | RTLD_LOCAL);
    if (!lib) fprintf(stderr, "  dlopen: %s\n", dlerror());
    printf("%s - shim: dlopen(\"libmachnet_shim.so\")\n", lib ? "ok" : "not ok");
    if (!lib) {
        printf("c-tests: 0 passed, 1 failed\n");
        return 1;
    }
    /* dlsym returns data pointers; POSIX guarantees the conversion to function pointers. */
    const char *(*version)(void);
    int (*init)(void);
    void *(*attach)(void);
    int (*detach)(void *);
    const char *(*last_error)(void);
    *(void **)&version = dlsym(lib, "machnet_version");
    *(void **)&init = dlsym(lib, "machnet_init");
    *(void **)&attach = dlsym(lib, "machnet_attach");
    *(void **)&detach = dlsym(lib, "machnet_detach");
    *(void **)&last_error = dlsym(lib, "machnet_last_error");

    int ok = version && strncmp(version(), "machnet-rs ", 11) == 0;
    printf("%s - shim: machnet_version\n", ok ? "ok" : "not ok");
    failed += !ok;

    ok = init && attach && detach && last_error;
    if (ok && init() != 0) {
        fprintf(stderr, "  machnet_init: %s\n", last_error());
        ok = 0;
    }
    void *ch = ok ? attach() : NULL;
    if (ok && !ch) fprintf(stderr, "  machnet_attach: %s\n", last_error());
    ok = ch != NULL && detach(ch) == 0;
    printf("%s - shim: machnet_init, machnet_attach, machnet_detach\n", ok ? "ok" : "not ok");
    failed += !ok;
    printf("c-tests: %d passed, %d failed\n", 3 - failed, failed);
    return failed ? 1 : 0;
}
