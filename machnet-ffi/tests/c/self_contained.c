/*
 * machnet.h is self-contained like the original's: a program that includes only it may use
 * the standard declarations the original's machnet.h and machnet_common.h brought in
 * (<assert.h>, <fcntl.h>, <stddef.h>, <stdint.h>, <stdio.h>, <stdlib.h>, <string.h>,
 * <sys/mman.h>, <sys/stat.h>, <sys/types.h>, <unistd.h>). ci/ffi.sh compiles this file as
 * C11 and as C++17 with -Wall -Wextra -Werror; it is not run. Programs written for the
 * original rely on this: its examples/hello_world.cc calls usleep with no other include
 * (tests/c/original/).
 */
#define _DEFAULT_SOURCE /* usleep under -std=c11, as any C11 program using it must ask */
#include <machnet.h>

int self_contained_uses(const char *path);

int self_contained_uses(const char *path) {
    assert(path != NULL);                                     /* <assert.h> */
    int fd = open(path, O_RDONLY);                            /* <fcntl.h> */
    size_t n = strlen(path);                                  /* <string.h>, <stddef.h> */
    uint16_t port = (uint16_t)n;                              /* <stdint.h> */
    ssize_t got = 0;                                          /* <sys/types.h> */
    struct stat st;                                           /* <sys/stat.h> */
    if (fd >= 0 && fstat(fd, &st) == 0 && st.st_size > 0) {
        void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0); /* <sys/mman.h> */
        if (p != MAP_FAILED) munmap(p, (size_t)st.st_size);
        got = read(fd, &port, sizeof port);                   /* <unistd.h> */
    }
    if (fd >= 0) close(fd);
    usleep(1);                                                /* <unistd.h> */
    printf("%zd %u\n", got, (unsigned)port);                  /* <stdio.h> */
    if (got < 0) exit(1);                                     /* <stdlib.h> */
    return (int)MACHNET_MSG_MAX_LEN > 0 ? 0 : 1;
}
