"""Synchronous API against real sidecars: echo of every size, flows, events, errors."""

from __future__ import annotations

import array
import builtins
import random
from typing import Callable, List, Type

import pytest

import machnet
from harness import ECHO_PORT, IP_A, IP_B, IP_C, Sidecar

MiB = 1 << 20
SIZES = [1, 2, 63, 64, 1000, 1472, 1473, 4096, 65536, 1 * MiB, 8 * MiB - 1, 8 * MiB]


def payload(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def echo(ch: machnet.Channel, flow: machnet.Flow, data: machnet.Buffer) -> bytes:
    ch.send(flow, data)
    got_flow, got = ch.recv(timeout=60)
    assert got_flow == flow
    return got


def test_attach_reports_the_sidecar(mb: machnet.Machnet, sidecar_b: Sidecar) -> None:
    assert mb.local_ip == IP_B
    assert mb.engines == 2
    assert mb.max_message_len == 8 * MiB
    assert mb.socket_path == str(sidecar_b.sock)
    assert not mb.is_sidecar_gone()
    assert mb.fileno() >= 0


@pytest.mark.parametrize("size", SIZES)
def test_echo_is_byte_identical_for_every_size(echo_channel: machnet.Channel, size: int) -> None:
    flow = echo_channel.connect(IP_A, ECHO_PORT)
    assert flow.remote_addr == (IP_A, ECHO_PORT)
    assert flow.local_ip == IP_B
    msg = payload(size, size)
    got = echo(echo_channel, flow, msg)
    assert len(got) == size
    assert got == msg


@pytest.mark.parametrize(
    "wrap",
    [bytes, bytearray, memoryview, lambda b: memoryview(bytearray(b)), lambda b: memoryview(b)[1:]],
    ids=["bytes", "bytearray", "memoryview", "memoryview-bytearray", "memoryview-slice"],
)
def test_send_accepts_bytes_bytearray_and_memoryview(
    echo_channel: machnet.Channel, wrap: Callable[[bytes], machnet.Buffer]
) -> None:
    flow = echo_channel.connect(IP_A, ECHO_PORT)
    for size in (1, 3000, 2 * MiB):
        raw = payload(size + 7, size + 1)
        data = wrap(raw)
        assert echo(echo_channel, flow, data) == bytes(data)


def test_send_accepts_non_contiguous_and_typed_memoryviews(echo_channel: machnet.Channel) -> None:
    flow = echo_channel.connect(IP_A, ECHO_PORT)
    raw = payload(1, 10001)
    strided = memoryview(raw)[::3]
    assert echo(echo_channel, flow, strided) == raw[::3]
    ints = array.array("i", range(1000))
    assert echo(echo_channel, flow, memoryview(ints)) == ints.tobytes()


def test_many_messages_in_flight_arrive_in_order(echo_channel: machnet.Channel) -> None:
    flow = echo_channel.connect(IP_A, ECHO_PORT)
    msgs = [payload(i, 1 + (i * 997) % 20000) for i in range(200)]
    for m in msgs:
        echo_channel.send(flow, m)
    for m in msgs:
        f, got = echo_channel.recv(timeout=60)
        assert f == flow
        assert got == m


def test_several_flows_on_one_channel_and_engines(mb: machnet.Machnet, sidecar_a: Sidecar) -> None:
    chans = [mb.open_channel(engine=e) for e in (0, 1)]
    try:
        assert [c.engine for c in chans] == [0, 1]
        for k, ch in enumerate(chans):
            flows = [ch.connect(IP_A, ECHO_PORT) for _ in range(3)]
            assert len(set(flows)) == 3
            assert set(ch.flows()) == set(flows)
            for i, f in enumerate(flows):
                ch.send(f, payload(k * 10 + i, 100 + i))
            got = {}
            for _ in flows:
                f, data = ch.recv(timeout=30)
                got[f] = data
            assert got == {f: payload(k * 10 + i, 100 + i) for i, f in enumerate(flows)}
    finally:
        for c in chans:
            c.close()


def test_try_recv_and_recv_timeout(echo_channel: machnet.Channel) -> None:
    assert echo_channel.try_recv() is None
    with pytest.raises(machnet.TimeoutError) as e:
        echo_channel.recv(timeout=0.05)
    assert isinstance(e.value, builtins.TimeoutError)
    assert isinstance(e.value, machnet.MachnetError)
    with pytest.raises(machnet.TimeoutError):
        echo_channel.recv(timeout=0)
    flow = echo_channel.connect(IP_A, ECHO_PORT)
    echo_channel.send(flow, b"late")
    # try_recv returns it once it is there (bounded wait through recv).
    assert echo_channel.recv(timeout=30) == (flow, b"late")
    assert echo_channel.try_recv() is None


def test_try_send(echo_channel: machnet.Channel) -> None:
    flow = echo_channel.connect(IP_A, ECHO_PORT)
    assert echo_channel.try_send(flow, b"x" * 100) is True
    assert echo_channel.recv(timeout=30) == (flow, b"x" * 100)


def test_connect_refused(echo_channel: machnet.Channel) -> None:
    with pytest.raises(machnet.ConnectionRefusedError) as e:
        echo_channel.connect(IP_A, 4321, timeout=30)
    assert isinstance(e.value, builtins.ConnectionRefusedError)
    assert isinstance(e.value, machnet.FlowError)
    assert e.value.reason == "refused"


def test_connect_times_out_without_a_peer(echo_channel: machnet.Channel) -> None:
    # Nothing runs on 127.0.0.3.
    with pytest.raises(machnet.TimeoutError):
        echo_channel.connect(IP_C, 888, timeout=0.3)


def test_server_in_python_events_and_graceful_close(
    ma: machnet.Machnet, mb: machnet.Machnet, port: int
) -> None:
    with ma.open_channel() as server, mb.open_channel() as client:
        server.listen(port)
        flow = client.connect(IP_A, port)
        client.send(flow, b"hello")
        ev = server.next_event(timeout=30)
        assert ev is not None and ev.kind == "accepted" and ev.port == port
        sflow = ev.flow
        assert sflow.remote_addr == flow.local_addr and sflow.local_addr == flow.remote_addr
        ev = server.next_event(timeout=30)
        assert ev == machnet.Event("message", sflow, data=b"hello")
        server.send(sflow, b"world")
        assert client.recv(timeout=30) == (flow, b"world")
        assert client.flow_status(flow) == machnet.FlowStatus("open")
        client.close_flow(flow)
        assert client.flow_status(flow).state == "closing"
        with pytest.raises(machnet.FlowClosedError):
            client.send(flow, b"after close")
        ev = server.next_event(timeout=30)
        assert ev is not None and (ev.kind, ev.flow) == ("peer_closed", sflow)
        server.close_flow(sflow)
        ev = server.next_event(timeout=30)
        assert ev is not None and (ev.kind, ev.flow, ev.reason) == ("closed", sflow, "graceful")
        assert server.next_event(timeout=0) is None
        server.unlisten(port)


def test_reset_flow_raises_connection_reset(
    ma: machnet.Machnet, mb: machnet.Machnet, port: int
) -> None:
    with ma.open_channel() as server, mb.open_channel() as client:
        server.listen(port)
        flow = client.connect(IP_A, port)
        client.send(flow, b"x")
        sflow, data = server.recv(timeout=30)
        assert data == b"x"
        server.abort_flow(sflow)
        ev = client.next_event(timeout=30)
        assert ev is not None and (ev.kind, ev.flow, ev.reason) == ("closed", flow, "reset")
        assert client.flow_status(flow) == machnet.FlowStatus("closed", "reset")
        with pytest.raises(machnet.ConnectionResetError) as e:
            client.send(flow, b"y")
        assert isinstance(e.value, builtins.ConnectionResetError)
        assert e.value.reason == "reset"
        assert machnet.describe_close_code("reset") == "reset by the remote host"


def test_channel_abort_resets_the_peers_flow(
    ma: machnet.Machnet, mb: machnet.Machnet, port: int
) -> None:
    with mb.open_channel() as client:
        server = ma.open_channel()
        server.listen(port)
        flow = client.connect(IP_A, port)
        client.send(flow, b"x")
        assert server.recv(timeout=30)[1] == b"x"
        server.abort()
        assert server.closed
        server.abort()  # twice: nothing happens
        server.close()
        with pytest.raises(machnet.ChannelClosedError):
            server.listen(port)
        ev = client.next_event(timeout=30)
        assert ev is not None and (ev.kind, ev.flow, ev.reason) == ("closed", flow, "reset")


def test_port_in_use(ma: machnet.Machnet, port: int) -> None:
    with ma.open_channel() as a, ma.open_channel() as b:
        a.listen(port)
        # The same channel twice: in use. Another channel of this process joins the port's
        # listen group (docs/CHANNEL.md §2); another process's port is refused.
        with pytest.raises(machnet.PortInUseError):
            a.listen(port)
        b.listen(port)
        with pytest.raises(machnet.PortInUseError):
            b.listen(ECHO_PORT)  # the Rust echo server's


def test_channel_context_manager_and_close(mb: machnet.Machnet) -> None:
    with mb.open_channel() as ch:
        flow = ch.connect(IP_A, ECHO_PORT)
        assert not ch.closed
    assert ch.closed
    ch.close()  # twice: nothing happens
    for op in (lambda: ch.send(flow, b"x"), lambda: ch.recv(timeout=0), ch.try_recv):
        with pytest.raises(machnet.ChannelClosedError) as e:
            op()
        assert e.value.reason == "detached"
    assert list(ch) == []  # iteration ends on a closed channel


def test_flow_of_another_channel_is_refused(mb: machnet.Machnet) -> None:
    with mb.open_channel() as a, mb.open_channel() as b:
        flow = a.connect(IP_A, ECHO_PORT)
        with pytest.raises(machnet.InvalidArgumentError):
            b.send(flow, b"x")
        with pytest.raises(machnet.InvalidArgumentError):
            b.close_flow(flow)
        assert b.flow_status(flow).state == "closed"


def test_attach_without_a_sidecar(tmp_path: object) -> None:
    with pytest.raises(machnet.SidecarNotFoundError) as e:
        machnet.attach("/nonexistent/machnet.sock")
    assert isinstance(e.value, ConnectionError)
    assert "/nonexistent/machnet.sock" in str(e.value)


def test_sidecar_gone(tmp_dir: object) -> None:
    from pathlib import Path

    d = Path(str(tmp_dir))
    s = Sidecar("gone", IP_C, d)
    try:
        m = machnet.attach(s.sock)
        ch = m.open_channel()
        s.stop(9)  # SIGKILL: no goodbye
        with pytest.raises(machnet.SidecarGoneError):
            ch.recv(timeout=30)
        with pytest.raises(machnet.SidecarGoneError):
            m.open_channel()
        assert m.is_sidecar_gone()
        ch.close()  # closing a channel of a dead sidecar is fine
    finally:
        s.stop()


def test_every_call_fails_with_sidecar_gone_after_the_sidecar_died(
    tmp_dir: object, sidecar_a: Sidecar
) -> None:
    """Issue 14: after a SIGKILL of the sidecar, a send into a ring with room raised nothing
    and the message was lost. Every call that hands something to the sidecar must raise
    SidecarGoneError, with no receive in between."""
    from pathlib import Path

    s = Sidecar("gone-send", IP_C, Path(str(tmp_dir)))
    try:
        m = machnet.attach(s.sock)
        ch = m.open_channel()
        flow = ch.connect(IP_A, ECHO_PORT)
        assert echo(ch, flow, b"ping") == b"ping"
        s.stop(9)  # SIGKILL, and reaped: the process is dead
        calls: List[Callable[[], object]] = [
            lambda: ch.send(flow, b"lost?"),
            lambda: ch.try_send(flow, b"lost?"),
            lambda: ch.connect(IP_A, ECHO_PORT),
            lambda: ch.listen(7800),
            lambda: ch.unlisten(7800),
            lambda: ch.close_flow(flow),
            lambda: ch.abort_flow(flow),
            lambda: m.open_channel(),
            lambda: ch.recv(timeout=0),
        ]
        for call in calls:
            with pytest.raises(machnet.SidecarGoneError):
                call()
        assert m.is_sidecar_gone()
        ch.close()  # closing a channel of a dead sidecar is fine
    finally:
        s.stop()


def test_message_too_large(echo_channel: machnet.Channel) -> None:
    flow = echo_channel.connect(IP_A, ECHO_PORT)
    with pytest.raises(machnet.MessageTooLargeError) as e:
        echo_channel.send(flow, bytes(echo_channel.max_message_len + 1))
    assert isinstance(e.value, ValueError)
    # The flow still works.
    assert echo(echo_channel, flow, b"ok") == b"ok"


VALUE_ERRORS: List[Callable[[machnet.Channel, machnet.Flow], object]] = [
    lambda ch, f: ch.listen(0),
    lambda ch, f: ch.listen(-1),
    lambda ch, f: ch.listen(65536),
    lambda ch, f: ch.listen(2**70),
    lambda ch, f: ch.unlisten(-5),
    lambda ch, f: ch.connect("not an ip", 1),
    lambda ch, f: ch.connect("1.2.3.4.5", 1),
    lambda ch, f: ch.connect(IP_A, 0),
    lambda ch, f: ch.connect(IP_A, 70000),
    lambda ch, f: ch.connect(IP_A, ECHO_PORT, timeout=-1),
    lambda ch, f: ch.connect(IP_A, ECHO_PORT, timeout=float("nan")),
    lambda ch, f: ch.send(f, b""),
    lambda ch, f: ch.send(f, bytearray()),
    lambda ch, f: ch.try_send(f, memoryview(b"")),
    lambda ch, f: ch.recv(timeout=-0.5),
    lambda ch, f: ch.recv(timeout=float("nan")),
    lambda ch, f: ch.next_event(timeout=-1),
    lambda ch, f: ch.set_busy_poll(-1),
    lambda ch, f: ch.machnet.open_channel(engine=-1),
    lambda ch, f: ch.machnet.open_channel(engine=2),  # sidecar b has engines 0 and 1
    lambda ch, f: ch.machnet.open_channel(engine=70000),
    lambda ch, f: ch.machnet.set_control_timeout(-1),
    lambda ch, f: machnet.attach(""),
]

TYPE_ERRORS: List[Callable[[machnet.Channel, machnet.Flow], object]] = [
    lambda ch, f: ch.listen("80"),  # type: ignore[arg-type]
    lambda ch, f: ch.listen(80.0),  # type: ignore[arg-type]
    lambda ch, f: ch.listen(True),
    lambda ch, f: ch.listen(None),  # type: ignore[arg-type]
    lambda ch, f: ch.connect(0x7F000001, ECHO_PORT),  # type: ignore[arg-type]
    lambda ch, f: ch.connect(IP_A, "888"),  # type: ignore[arg-type]
    lambda ch, f: ch.connect(IP_A, ECHO_PORT, timeout="1"),  # type: ignore[arg-type]
    lambda ch, f: ch.send(f, "text"),  # type: ignore[arg-type]
    lambda ch, f: ch.send(f, 5),  # type: ignore[arg-type]
    lambda ch, f: ch.send(f, [1, 2]),  # type: ignore[arg-type]
    lambda ch, f: ch.send("flow", b"x"),  # type: ignore[arg-type]
    lambda ch, f: ch.send(None, b"x"),  # type: ignore[arg-type]
    lambda ch, f: ch.close_flow(1),  # type: ignore[arg-type]
    lambda ch, f: ch.flow_status("f"),  # type: ignore[arg-type]
    lambda ch, f: ch.recv(timeout="soon"),  # type: ignore[arg-type]
    lambda ch, f: ch.recv(timeout=True),
    lambda ch, f: ch.set_auto_close(1),  # type: ignore[arg-type]
    lambda ch, f: ch.machnet.open_channel(engine="0"),  # type: ignore[arg-type]
    lambda ch, f: machnet.attach(123),  # type: ignore[arg-type]
    lambda ch, f: machnet.describe_close_code(3),  # type: ignore[arg-type]
]


BAD_CALLS = [(c, machnet.InvalidArgumentError, ValueError) for c in VALUE_ERRORS] + [
    (c, machnet.ArgumentTypeError, TypeError) for c in TYPE_ERRORS
]


@pytest.mark.parametrize(
    "call,error,builtin",
    BAD_CALLS,
    ids=[f"value{i}" for i in range(len(VALUE_ERRORS))] + [f"type{i}" for i in range(len(TYPE_ERRORS))],
)
def test_bad_arguments_raise_machnet_errors(
    echo_channel: machnet.Channel,
    call: Callable[[machnet.Channel, machnet.Flow], object],
    error: Type[machnet.MachnetError],
    builtin: Type[Exception],
) -> None:
    flow = echo_channel.connect(IP_A, ECHO_PORT)
    with pytest.raises(error) as e:
        call(echo_channel, flow)
    assert isinstance(e.value, builtin)
    # Nothing broke: the flow still echoes.
    assert echo(echo_channel, flow, b"still fine") == b"still fine"


def test_flow_objects(echo_channel: machnet.Channel) -> None:
    a = echo_channel.connect(IP_A, ECHO_PORT)
    b = echo_channel.connect(IP_A, ECHO_PORT)
    assert a != b and a == a and len({a, b, a}) == 2
    assert a.handle != b.handle and a.handle > 0
    assert a.local_port != b.local_port
    assert repr(a).startswith("Flow(handle=")
    assert isinstance(a, machnet.Flow)


def test_connect_accepts_ipaddress_objects(echo_channel: machnet.Channel) -> None:
    import ipaddress

    flow = echo_channel.connect(ipaddress.IPv4Address(IP_A), ECHO_PORT)
    assert echo(echo_channel, flow, b"ip") == b"ip"


def test_exception_hierarchy() -> None:
    for name in machnet._errors.__all__:
        cls = getattr(machnet, name)
        assert issubclass(cls, machnet.MachnetError), name
    assert issubclass(machnet.InvalidArgumentError, ValueError)
    assert issubclass(machnet.ArgumentTypeError, TypeError)
    assert issubclass(machnet.TimeoutError, builtins.TimeoutError)
    assert issubclass(machnet.SidecarNotFoundError, ConnectionError)
    assert issubclass(machnet.SidecarGoneError, ConnectionError)
    assert issubclass(machnet.ConnectionRefusedError, builtins.ConnectionRefusedError)
    assert issubclass(machnet.ConnectionResetError, builtins.ConnectionResetError)
    assert machnet.ConnectionRefusedError is not builtins.ConnectionRefusedError
