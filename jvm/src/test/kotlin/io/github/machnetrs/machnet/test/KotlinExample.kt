// The README's Kotlin example, verbatim from line 6 on (ci/jvm.sh checks they agree);
// ReadmeExamplesTest runs it against the echo server.
@file:JvmName("KotlinExample")
package io.github.machnetrs.machnet.test

import io.github.machnetrs.machnet.Machnet
import java.time.Duration

fun echoOnce(socket: String, server: String, port: Int, message: ByteArray): ByteArray =
    Machnet.attach(socket).use { machnet ->
        machnet.openChannel().use { ch ->
            val flow = ch.connect(server, port)
            ch.send(flow, message)
            val reply = ch.recv(Duration.ofSeconds(5))    // or ch.recvAsync().await() in a coroutine
            check(reply.flow == flow)
            reply.data
        }
    }
