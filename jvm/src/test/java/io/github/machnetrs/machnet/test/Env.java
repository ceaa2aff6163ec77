package io.github.machnetrs.machnet.test;

import java.time.Duration;

/** The environment ci/jvm.sh gives the tests (ci/lib/sidecars.sh `export_c_abi_test_env`). */
final class Env {
    private Env() {}

    /** A variable the suite cannot run without. */
    static String get(String name) {
        String v = System.getenv(name);
        if (v == null || v.isEmpty()) {
            throw new IllegalStateException(name + " is not set: run the tests through ci/jvm.sh");
        }
        return v;
    }

    /** Control socket of the client sidecar (127.0.0.2). */
    static String sock() { return get("MACHNET_TEST_SOCK"); }

    /** Control socket of the server sidecar (127.0.0.1), where the apps run. */
    static String peerSock() { return get("MACHNET_TEST_PEER_SOCK"); }

    static String localIp() { return get("MACHNET_TEST_LOCAL_IP"); }

    static String peerIp() { return get("MACHNET_TEST_PEER_IP"); }

    static int echoPort() { return Integer.parseInt(get("MACHNET_TEST_ECHO_PORT")); }

    /** How long a test waits for something that must happen. */
    static final Duration LONG = Duration.ofSeconds(10);

    /** Byte i of a size-n message: (i * 7 + n) mod 256 (conformance/README.md). */
    static byte[] payload(int n) {
        byte[] b = new byte[n];
        for (int i = 0; i < n; i++) {
            b[i] = (byte) ((i * 7 + n) % 256);
        }
        return b;
    }
}
