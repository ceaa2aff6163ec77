"""The GIL is released while blocking; asyncio waits through the event loop, not threads."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional, Tuple, Union

import pytest

import machnet
from harness import ECHO_PORT, IP_A, IP_B, Sidecar


def payload(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def test_recv_releases_the_gil(ma: machnet.Machnet, mb: machnet.Machnet, port: int) -> None:
    """Thread T blocks in recv() on a listening channel; the main thread keeps running Python
    code meanwhile (it could not if recv held the GIL) and uses the same channel, then connects
    and sends the message that wakes T."""
    server = mb.open_channel()
    server.listen(port)
    result: List[Union[Tuple[machnet.Flow, bytes], BaseException]] = []

    def blocked() -> None:
        try:
            result.append(server.recv(timeout=120))
        except BaseException as e:  # noqa: BLE001 - reported to the main thread
            result.append(e)

    t = threading.Thread(target=blocked)
    t.start()
    try:
        # The main thread makes progress while T is blocked inside recv.
        counter = 0
        for i in range(200_000):
            counter += i & 1
        for _ in range(20):
            time.sleep(0.001)
        assert counter == 100_000
        assert t.is_alive() and not result, f"recv returned early: {result}"
        # ... and may use the channel T waits on (ChannelBusyError is no longer raised).
        assert server.flows() == []
        assert server.try_recv() is None
        # Now wake T up with a message from another sidecar.
        with ma.open_channel() as client:
            flow = client.connect(IP_B, port)
            msg = payload(7, 100_000)
            client.send(flow, msg)
            t.join(60)
            assert not t.is_alive()
            assert len(result) == 1
            got = result[0]
            assert not isinstance(got, BaseException), repr(got)
            sflow, data = got
            assert data == msg
            assert sflow.remote_addr == flow.local_addr
    finally:
        t.join(150)
        server.close()


def test_ctrl_c_interrupts_a_blocking_recv(sidecar_b: Sidecar) -> None:
    """SIGINT reaches a thread blocked in recv() (no timeout): KeyboardInterrupt is raised."""
    code = (
        "import sys, machnet\n"
        "ch = machnet.attach(sys.argv[1]).open_channel()\n"
        "print('waiting', flush=True)\n"
        "try:\n"
        "    ch.recv()\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True)\n"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", code, str(sidecar_b.sock)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert p.stdout is not None
        assert p.stdout.readline() == "waiting\n"
        time.sleep(0.05)  # let it get into recv (if not yet, the signal is seen on entry)
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=60)
        assert out == "interrupted\n" and p.returncode == 0
    finally:
        p.kill()
        p.wait()


def test_threads_share_one_channel(mb: machnet.Machnet, sidecar_a: Sidecar) -> None:
    """Four sender threads (one flow each) and three receiver threads share one channel with
    the Rust echo server: every echo arrives exactly once, and each receiver sees the messages
    of a flow in the order they were sent."""
    seed = random.randrange(1 << 32)
    senders, receivers, per_flow = 4, 3, 150
    errors: List[BaseException] = []
    got: List[List[Tuple[machnet.Flow, int, bytes]]] = [[] for _ in range(receivers)]
    total = senders * per_flow
    taken = 0
    lock = threading.Lock()

    def message(k: int, i: int) -> bytes:
        body = payload(seed + k * 100_000 + i, random.Random(seed + i).randrange(1, 3000))
        return k.to_bytes(2, "big") + i.to_bytes(4, "big") + body

    with mb.open_channel() as ch:
        flows = [ch.connect(IP_A, ECHO_PORT) for _ in range(senders)]

        def send(k: int) -> None:
            try:
                for i in range(per_flow):
                    ch.send(flows[k], message(k, i))
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        def receive(r: int) -> None:
            nonlocal taken
            try:
                while True:
                    with lock:
                        if taken == total:
                            return
                        taken += 1
                    flow, data = ch.recv(timeout=60)
                    got[r].append((flow, int.from_bytes(data[2:6], "big"), data))
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=receive, args=(r,)) for r in range(receivers)]
        threads += [threading.Thread(target=send, args=(k,)) for k in range(senders)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, f"seed {seed}: {errors}"
        assert ch.try_recv() is None, f"seed {seed}: a message arrived twice"
    everything = sorted((flows.index(f), i, d) for per in got for f, i, d in per)
    expected = [(k, i, message(k, i)) for k in range(senders) for i in range(per_flow)]
    assert everything == expected, f"seed {seed}: not every echo exactly once"
    for per in got:
        for k, flow in enumerate(flows):
            seqs = [i for f, i, _ in per if f == flow]
            assert seqs == sorted(seqs), f"seed {seed}: flow {k} out of order in one receiver"


def test_channel_per_thread(mb: machnet.Machnet, sidecar_a: Sidecar) -> None:
    """Four threads, each with its own channel and flow, echo concurrently."""
    errors: List[BaseException] = []

    def worker(k: int) -> None:
        try:
            with mb.open_channel() as ch:
                flow = ch.connect(IP_A, ECHO_PORT)
                for i in range(30):
                    msg = payload(k * 1000 + i, 1 + (k * 7919 + i * 104729) % 70000)
                    ch.send(flow, msg)
                    f, got = ch.recv(timeout=60)
                    assert f == flow and got == msg
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors


def test_asyncio_several_channels_concurrently(mb: machnet.Machnet, sidecar_a: Sidecar) -> None:
    async def one(k: int) -> int:
        async with mb.open_channel() as ch:
            flow = ch.connect(IP_A, ECHO_PORT)
            for i in range(40):
                msg = payload(k * 100 + i, 1 + (k * 31 + i * 977) % 50000)
                ch.send(flow, msg)
                f, got = await ch.recv_async(timeout=60)
                assert f == flow
                assert got == msg
            return k

    async def main() -> List[int]:
        threads_before = threading.active_count()
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0)

        tick = asyncio.create_task(ticker())
        done = await asyncio.gather(*(one(k) for k in range(6)))
        stop.set()
        await tick
        assert ticks > 0  # the loop ran other tasks while the flows waited
        assert threading.active_count() == threads_before  # no thread per call
        return list(done)

    assert asyncio.run(main()) == list(range(6))


def test_asyncio_several_flows_on_one_channel(mb: machnet.Machnet, sidecar_a: Sidecar) -> None:
    """Writers on four flows and one `async for` reader share a channel."""

    async def main() -> Dict[machnet.Flow, List[bytes]]:
        async with mb.open_channel() as ch:
            flows = [ch.connect(IP_A, ECHO_PORT) for _ in range(4)]
            sent: Dict[machnet.Flow, List[bytes]] = {f: [] for f in flows}
            got: Dict[machnet.Flow, List[bytes]] = {f: [] for f in flows}
            per_flow = 25
            total = per_flow * len(flows)

            async def writer(k: int, flow: machnet.Flow) -> None:
                for i in range(per_flow):
                    msg = payload(k * 1000 + i, 1 + (i * 4099) % 30000)
                    sent[flow].append(msg)
                    ch.send(flow, msg)
                    await asyncio.sleep(0)

            async def reader() -> None:
                n = 0
                async for flow, data in ch:
                    got[flow].append(data)
                    n += 1
                    if n == total:
                        return

            await asyncio.wait_for(
                asyncio.gather(reader(), *(writer(k, f) for k, f in enumerate(flows))), 120
            )
            assert got == sent
            return got

    got = asyncio.run(main())
    assert sum(len(v) for v in got.values()) == 100


def test_asyncio_timeout_events_and_server(
    ma: machnet.Machnet, mb: machnet.Machnet, port: int
) -> None:
    async def main() -> None:
        with mb.open_channel() as server, ma.open_channel() as client:
            with pytest.raises(machnet.TimeoutError):
                await server.recv_async(timeout=0.05)
            assert await server.next_event_async(timeout=0.01) is None
            server.listen(port)

            async def serve() -> Optional[machnet.Event]:
                ev = await server.next_event_async(timeout=60)
                assert ev is not None and ev.kind == "accepted"
                flow, data = await server.recv_async(timeout=60)
                server.send(flow, data[::-1])
                return ev

            task = asyncio.create_task(serve())
            await asyncio.sleep(0)
            flow = client.connect(IP_B, port)
            client.send(flow, b"abcdef")
            ev = await task
            assert ev is not None and ev.port == port
            assert await client.recv_async(timeout=60) == (flow, b"fedcba")

    asyncio.run(main())


def test_connect_async_waits_in_the_event_loop_and_fails_like_connect(
    ma: machnet.Machnet, mb: machnet.Machnet, port: int
) -> None:
    """connect_async: established through the event loop while another task keeps running,
    refused like connect, and a cancelled connect leaves the channel usable."""

    async def main() -> None:
        with mb.open_channel() as server, ma.open_channel() as client:
            server.listen(port)
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0)

            t = asyncio.create_task(ticker())
            flow = await client.connect_async(IP_B, port, timeout=60)
            t.cancel()
            assert ticks > 0, "the event loop was blocked during connect_async"
            client.send(flow, b"hi")
            got_flow, data = await server.recv_async(timeout=60)
            assert data == b"hi"
            with pytest.raises(machnet.ConnectionRefusedError):
                await client.connect_async(IP_B, port + 1, timeout=60)
            # Cancelled before the answer: the request is abandoned, the channel goes on.
            task = asyncio.create_task(client.connect_async(IP_B, port, timeout=60))
            await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            client.send(flow, b"still")
            assert (await server.recv_async(timeout=60))[1] == b"still"
            with pytest.raises(machnet.ArgumentTypeError):
                await client.connect_async(IP_B, port, timeout="soon")  # type: ignore[arg-type]

    asyncio.run(main())


def test_asyncio_iteration_ends_when_the_channel_closes(mb: machnet.Machnet) -> None:
    async def main() -> int:
        ch = mb.open_channel()
        n = 0

        async def consume() -> None:
            nonlocal n
            async for _ in ch:
                n += 1

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.01)
        ch.close()
        await asyncio.wait_for(task, 30)
        return n

    assert asyncio.run(main()) == 0


def test_asyncio_sidecar_gone(tmp_dir: object) -> None:
    from pathlib import Path

    from harness import IP_C

    s = Sidecar("gone-async", IP_C, Path(str(tmp_dir)))
    try:
        m = machnet.attach(s.sock)
        ch = m.open_channel()

        async def main() -> None:
            waiter = asyncio.create_task(ch.recv_async())
            await asyncio.sleep(0.01)
            s.stop(9)
            with pytest.raises(machnet.SidecarGoneError):
                await asyncio.wait_for(waiter, 30)

        asyncio.run(main())
    finally:
        s.stop()


def test_asyncio_channel_reused_across_event_loops(echo_channel: machnet.Channel) -> None:
    """A channel keeps its eventfd registered in one loop; a later loop takes it over."""
    flow = echo_channel.connect(IP_A, ECHO_PORT)

    async def round_trips(seed: int) -> None:
        for i in range(20):
            msg = payload(seed + i, 1 + i * 100)
            echo_channel.send(flow, msg)
            assert await echo_channel.recv_async(timeout=60) == (flow, msg)

    for seed in (1, 1000, 2000):
        asyncio.run(round_trips(seed))
    # Synchronous use in between and after is unaffected.
    echo_channel.send(flow, b"sync")
    assert echo_channel.recv(timeout=60) == (flow, b"sync")


def test_busy_poll_receives_events_and_times_out(echo_channel: machnet.Channel) -> None:
    """With busy polling on, blocking receives still get every echo and still time out."""
    ch = echo_channel
    ch.set_busy_poll(0.01)
    flow = ch.connect(IP_A, ECHO_PORT)
    for i in range(50):
        msg = payload(i, 1 + i * 37)
        ch.send(flow, msg)
        assert ch.recv(timeout=60) == (flow, msg)
    ch.send(flow, b"event")
    assert ch.next_event(timeout=60) == machnet.Event("message", flow, data=b"event")
    with pytest.raises(machnet.TimeoutError):
        ch.recv(timeout=0.05)
    assert ch.next_event(timeout=0.05) is None
    ch.set_busy_poll(None)
    ch.send(flow, b"sleeping")
    assert ch.recv(timeout=60) == (flow, b"sleeping")
