"""Zero-copy messages against real sidecars: loans (``Channel.loan`` → ``SendLoan``) and
borrowed receives (``Channel.recv_zc`` → ``RecvView``), echoed by the Rust echo server."""

from __future__ import annotations

import asyncio
import gc
import random
import threading
from typing import Callable, List

import pytest

import machnet
from harness import ECHO_PORT, IP_A

MiB = 1 << 20
WOULD_BLOCK = "ERR_MACHNET_WOULD_BLOCK"


def payload(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def test_zero_copy_echo_is_byte_identical_and_in_order(echo_channel: machnet.Channel) -> None:
    ch = echo_channel
    flow = ch.connect(IP_A, ECHO_PORT)
    sizes = [1, 64 * 1024, 8 * MiB, 1, 64 * 1024, 8 * MiB] + [1] * 8 + [64 * 1024] * 4
    seed = random.randrange(1 << 30)
    msgs = [payload(seed + i, n) for i, n in enumerate(sizes)]
    got: List[bytes] = []
    errors: List[BaseException] = []

    def receive() -> None:
        # Another thread borrows the echoes while this one loans the requests.
        try:
            for _ in msgs:
                with ch.recv_zc(timeout=60) as (f, data):
                    assert f == flow
                    assert data.readonly
                    got.append(bytes(data))  # a copy: `data` is only valid in the block
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    t = threading.Thread(target=receive)
    t.start()
    for m in msgs:
        with ch.loan(flow, len(m), timeout=60) as loan:
            assert len(loan) == len(m) and loan.flow == flow
            loan.data[:] = m
            loan.commit()
        assert loan.done
    t.join(timeout=120)
    assert not t.is_alive(), "the receiving thread hangs"
    assert not errors, errors
    assert [len(g) for g in got] == sizes, f"seed {seed}"
    assert got == msgs, f"seed {seed}"


def test_loan_without_commit_sends_nothing(echo_channel: machnet.Channel) -> None:
    ch = echo_channel
    flow = ch.connect(IP_A, ECHO_PORT)
    with ch.loan(flow, 100) as loan:  # left without commit: cancelled
        loan.data[:5] = b"never"
    assert loan.done
    loan = ch.loan(flow, 10)
    memoryview(loan)[:] = b"cancelled!"
    loan.cancel()
    assert loan.done
    ch.loan(flow, 10)  # dropped at once: cancelled
    ch.loan(flow, 10).data[:3] = b"abc"  # a cycle (loan <-> its .data): the collector cancels it
    gc.collect()
    with pytest.raises(KeyError):
        with ch.loan(flow, 10) as loan:  # an exception leaves the block: cancelled
            raise KeyError("x")
    assert loan.done
    # The next sends work, and the first message echoed is the first one sent after all that.
    ch.send(flow, b"after")
    with ch.loan(flow, 6) as loan:
        loan.data[:] = b"after2"
        loan.commit()
    assert ch.recv(timeout=30) == (flow, b"after")
    assert ch.recv(timeout=30) == (flow, b"after2")


def test_partial_commit_sends_only_those_bytes(echo_channel: machnet.Channel) -> None:
    ch = echo_channel
    flow = ch.connect(IP_A, ECHO_PORT)
    for size, used in ((1000, 10), (64 * 1024, 1), (8 * MiB, 8 * MiB - 1)):
        data = payload(size, size)
        with ch.loan(flow, size, timeout=60) as loan:
            loan.data[:] = data
            loan.commit(used)
        f, got = ch.recv(timeout=60)
        assert f == flow and got == data[:used]


def test_commit_and_cancel_misuse(echo_channel: machnet.Channel) -> None:
    ch = echo_channel
    flow = ch.connect(IP_A, ECHO_PORT)
    with ch.loan(flow, 8) as loan:
        for bad in (0, 9, -1):
            with pytest.raises(machnet.InvalidArgumentError):
                loan.commit(bad)
        with pytest.raises(machnet.ArgumentTypeError):
            loan.commit("3")  # type: ignore[arg-type]
        assert not loan.done  # a refused length keeps the loan
        loan.data[:3] = b"abc"
        loan.commit(3)
        for again in (loan.commit, loan.cancel):
            with pytest.raises(machnet.InvalidArgumentError):
                again()
        with pytest.raises(BufferError):
            memoryview(loan)  # an ended loan exports nothing
        with pytest.raises(machnet.InvalidArgumentError):
            loan.data
    assert ch.recv(timeout=30) == (flow, b"abc")
    with pytest.raises(machnet.InvalidArgumentError):
        ch.loan(flow, 0)
    with pytest.raises(machnet.MessageTooLargeError):
        ch.loan(flow, ch.max_message_len + 1)
    with pytest.raises(machnet.ArgumentTypeError):
        ch.loan("flow", 1)  # type: ignore[arg-type]


def test_a_live_memoryview_blocks_commit(echo_channel: machnet.Channel) -> None:
    ch = echo_channel
    flow = ch.connect(IP_A, ECHO_PORT)
    loan = ch.loan(flow, 4)
    mv = memoryview(loan)
    assert not mv.readonly and len(mv) == 4
    mv[:] = b"live"
    for end in (loan.commit, loan.cancel):
        with pytest.raises(BufferError):
            end()
    assert not loan.done
    mv.release()
    loan.commit()
    assert ch.recv(timeout=30) == (flow, b"live")
    # Leaving the block with a memoryview alive: BufferError, and the loan is cancelled when
    # the memoryview goes.
    with pytest.raises(BufferError):
        with ch.loan(flow, 4) as loan:
            kept = loan.data[1:]
    assert not loan.done
    kept.release()
    assert loan.done
    ch.send(flow, b"next")
    assert ch.recv(timeout=30) == (flow, b"next")


def test_one_loan_per_channel(echo_channel: machnet.Channel) -> None:
    ch = echo_channel
    flow = ch.connect(IP_A, ECHO_PORT)
    loan = ch.loan(flow, 3)
    loan.data[:] = b"one"
    # The thread holding the loan cannot wait for itself.
    ops: List[Callable[[], object]] = [
        lambda: ch.loan(flow, 1),
        lambda: ch.try_loan(flow, 1),
        lambda: ch.send(flow, b"x"),
    ]
    for op in ops:
        with pytest.raises(machnet.MachnetError) as e:
            op()
        assert e.value.code == WOULD_BLOCK
    # Another thread's send waits for the commit: it cannot overtake the loaned message.
    errors: List[BaseException] = []

    def send_two() -> None:
        try:
            ch.send(flow, b"two")
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=send_two)
    t.start()
    loan.commit()
    t.join(timeout=60)
    assert not t.is_alive() and not errors, errors
    assert ch.recv(timeout=30) == (flow, b"one")
    assert ch.recv(timeout=30) == (flow, b"two")


def test_recv_view_release_rules(echo_channel: machnet.Channel) -> None:
    ch = echo_channel
    flow = ch.connect(IP_A, ECHO_PORT)
    ch.send(flow, b"hello world")
    view = ch.recv_zc(timeout=30)
    assert view.flow == flow and len(view) == 11 and bytes(view) == b"hello world"
    mv = memoryview(view)
    assert mv.readonly
    with pytest.raises(TypeError):
        mv[0] = 0  # read-only
    with pytest.raises(BufferError):
        view.release()  # a memoryview is alive
    assert not view.released
    tail = view.data[6:]
    mv.release()
    with pytest.raises(BufferError):
        view.release()  # releases .data, but its slice is alive
    assert bytes(tail) == b"world"  # still borrowed: intact
    tail.release()
    view.release()
    assert view.released
    with pytest.raises(machnet.InvalidArgumentError):
        view.release()  # twice
    with pytest.raises(BufferError):
        memoryview(view)  # a released view exports nothing
    with pytest.raises(BufferError):
        bytes(view)
    with pytest.raises(machnet.InvalidArgumentError):
        view.data
    # The channel goes on.
    ch.send(flow, b"next")
    with ch.recv_zc(timeout=30) as (f, data):
        assert f == flow and bytes(data) == b"next"
    with pytest.raises(ValueError):
        bytes(data)  # released with the block


def test_recv_view_left_while_exported_is_released_by_its_last_memoryview(
    echo_channel: machnet.Channel,
) -> None:
    ch = echo_channel
    flow = ch.connect(IP_A, ECHO_PORT)
    ch.send(flow, b"abc")
    with pytest.raises(BufferError):
        with ch.recv_zc(timeout=30) as (_, data):
            kept = data[1:]
    assert bytes(kept) == b"bc"  # not released yet
    kept.release()  # releases the message
    ch.send(flow, b"d")
    with ch.recv_zc(timeout=30) as (_, data):  # from this thread: no WOULD_BLOCK
        assert bytes(data) == b"d"


def test_one_borrowed_message_per_channel(echo_channel: machnet.Channel) -> None:
    ch = echo_channel
    flow = ch.connect(IP_A, ECHO_PORT)
    for m in (b"1", b"2", b"3"):
        ch.send(flow, m)
    first = ch.recv_zc(timeout=30)
    for op in (lambda: ch.recv_zc(timeout=30), ch.try_recv_zc):
        with pytest.raises(machnet.MachnetError) as e:
            op()
        assert e.value.code == WOULD_BLOCK
    assert ch.recv(timeout=30) == (flow, b"2")  # copying receives go on meanwhile
    # Another thread's borrowed receive waits for the release.
    got: List[bytes] = []
    t = threading.Thread(target=lambda: got.append(bytes(ch.recv_zc(timeout=60))))
    t.start()
    assert bytes(first) == b"1"
    first.release()
    t.join(timeout=60)
    assert not t.is_alive()
    assert got == [b"3"]
    gc.collect()  # the other thread's view was dropped: released
    ch.send(flow, b"4")
    with ch.recv_zc(timeout=30) as (_, data):
        assert bytes(data) == b"4"


def test_closing_the_channel_with_a_loan_and_a_view_out(mb: machnet.Machnet) -> None:
    ch = mb.open_channel()
    flow = ch.connect(IP_A, ECHO_PORT)
    ch.send(flow, b"x")
    view = ch.recv_zc(timeout=30)
    loan = ch.loan(flow, 4)
    mv = memoryview(loan)
    ch.close()
    mv[:] = b"late"  # the memory stays mapped: no crash
    mv.release()
    with pytest.raises(machnet.ChannelClosedError):
        loan.commit()
    assert loan.done
    assert bytes(view) == b"x"
    view.release()
    for op in (lambda: ch.loan(flow, 1), lambda: ch.recv_zc(timeout=0), ch.try_recv_zc):
        with pytest.raises(machnet.ChannelClosedError):
            op()


def test_recv_zc_async(echo_channel: machnet.Channel) -> None:
    ch = echo_channel
    flow = ch.connect(IP_A, ECHO_PORT)

    async def main() -> None:
        ch.send(flow, b"async")
        view = await ch.recv_zc_async(timeout=30)
        with pytest.raises(machnet.MachnetError) as e:
            await ch.recv_zc_async(timeout=30)  # one out, held by this thread: no waiting
        assert e.value.code == WOULD_BLOCK
        with view as (f, data):
            assert f == flow and bytes(data) == b"async"
        with pytest.raises(machnet.TimeoutError):
            await ch.recv_zc_async(timeout=0.05)

    asyncio.run(main())
