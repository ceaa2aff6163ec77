package io.github.machnetrs.machnet.test;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;

import org.junit.jupiter.api.Test;

/** The README's Kotlin example (src/test/kotlin/.../KotlinExample.kt) against the echo server.
 *  The Java example runs in ci/jvm.sh, from a separate Maven project that depends on the
 *  installed jar. */
class ReadmeExamplesTest {
    @Test
    void kotlinExampleEchoes() {
        byte[] msg = Env.payload(4321);
        assertArrayEquals(msg, KotlinExample.echoOnce(Env.sock(), Env.peerIp(), Env.echoPort(), msg));
    }
}
