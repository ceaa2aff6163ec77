/*
 * Sends one tagged message and returns from main at once, like the original Machnet
 * hello_world client: only the original API (machnet_init, machnet_attach, machnet_connect,
 * machnet_send), no close, no detach, no sleep. docs/CHANNEL.md §5 promises the message is
 * delivered anyway; examples/echo/send_then_exit.sh counts what arrives (machnet-echo sink).
 *
 *   MACHNET_SOCKET=... send_then_exit LOCAL_IP REMOTE_IP PORT TAG SIZE
 *
 * Message format (examples/echo/src/sink.rs): TAG as a little-endian u64, then byte i (i >= 8)
 * is (uint8_t)(TAG * 31 + i).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "machnet.h"

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s LOCAL_IP REMOTE_IP PORT TAG SIZE\n", argv[0]);
        return 2;
    }
    uint16_t port = (uint16_t)strtoul(argv[3], NULL, 10);
    uint64_t tag = strtoull(argv[4], NULL, 10);
    size_t size = (size_t)strtoull(argv[5], NULL, 10);
    if (size < 8 || size > MACHNET_MSG_MAX_LEN) {
        fprintf(stderr, "SIZE must be 8..%d\n", MACHNET_MSG_MAX_LEN);
        return 2;
    }
    uint8_t *msg = malloc(size);
    if (msg == NULL) return 1;
    for (int i = 0; i < 8; i++) msg[i] = (uint8_t)(tag >> (8 * i));
    for (size_t i = 8; i < size; i++) msg[i] = (uint8_t)(tag * 31 + i);

    if (machnet_init() != 0) { perror("machnet_init"); return 1; }
    void *ch = machnet_attach();
    if (ch == NULL) { perror("machnet_attach"); return 1; }
    MachnetFlow_t flow;
    if (machnet_connect(ch, argv[1], argv[2], port, &flow) != 0) {
        perror("machnet_connect");
        return 1;
    }
    if (machnet_send(ch, flow, msg, size) != 0) { perror("machnet_send"); return 1; }
    return 0; /* exit with the message just handed to the channel */
}
