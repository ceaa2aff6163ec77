"""Machnet for Python: reliable, message-oriented flows through the ``machnet`` sidecar.

A sidecar process owns the network interface and serves applications over shared memory
(see the project README). This package attaches to it::

    import machnet

    with machnet.attach() as m:                  # $MACHNET_SOCKET or /run/machnet/machnet.sock
        with m.open_channel() as ch:             # usable from many threads
            flow = ch.connect("10.0.0.2", 888)
            ch.send(flow, b"hello")              # bytes, bytearray or memoryview
            flow, reply = ch.recv(timeout=1.0)   # releases the GIL while it waits

Servers ``listen`` on a port; accepted flows show up as the flow of the messages they receive
(or as ``"accepted"`` events with :meth:`Channel.next_event`). With :mod:`asyncio`, use
``await ch.recv_async()`` or ``async for flow, data in ch`` — they wait on the channel's
wait fd through the event loop (``loop.add_reader``), never on a thread.

Zero-copy: :meth:`Channel.loan` lends room in the channel's ring to write a message in place
(``with ch.loan(flow, n) as loan: memoryview(loan)[:k] = ...; loan.commit(k)``; leaving the
block without committing cancels it), and :meth:`Channel.recv_zc` lends a received message in
place (``with ch.recv_zc() as (flow, data): ...``, ``data`` a read-only memoryview released with
the block). See :class:`SendLoan` and :class:`RecvView` for the lifetime rules.

Messages are delivered whole (1 byte to ``max_message_len``, 8 MiB by default), in order and
exactly once per flow. Errors are subclasses of :class:`MachnetError` (see :mod:`machnet._errors`).

The wheel also contains the sidecar: ``python -m machnet sidecar --help`` (or the
``machnet-sidecar`` command) runs the same program as the ``machnet`` binary.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import weakref
from dataclasses import dataclass
from types import TracebackType
from typing import (
    AsyncIterator,
    Dict,
    Iterator,
    List,
    Optional,
    Set,
    Tuple,
    Type,
    Union,
)

from . import _errors, _machnet
from ._errors import *  # noqa: F403 - the exception classes (listed in _errors.__all__)
from ._errors import ArgumentTypeError, ChannelClosedError, InvalidArgumentError, MachnetError, TimeoutError
from ._machnet import Flow, RecvView, SendLoan

__version__: str = _machnet.VERSION

#: Where the sidecar listens unless told otherwise.
DEFAULT_SOCKET_PATH: str = _machnet.DEFAULT_SOCKET_PATH
#: Environment variable that overrides :data:`DEFAULT_SOCKET_PATH` for :func:`attach`.
SOCKET_ENV: str = _machnet.SOCKET_ENV
#: Seconds :meth:`Channel.connect` waits unless given a timeout.
DEFAULT_CONNECT_TIMEOUT: float = _machnet.DEFAULT_CONNECT_TIMEOUT

#: Anything :meth:`Channel.send` accepts as a message.
Buffer = Union[bytes, bytearray, memoryview]
#: A timeout in seconds (``None``: wait as long as needed).
Timeout = Optional[float]
#: What :meth:`Channel.recv` returns.
Message = Tuple[Flow, bytes]
#: A path to a control socket.
PathLike = Union[str, "os.PathLike[str]"]

__all__ = [
    "attach",
    "Machnet",
    "Channel",
    "Flow",
    "SendLoan",
    "RecvView",
    "Event",
    "FlowStatus",
    "Buffer",
    "Message",
    "describe_close_code",
    "DEFAULT_SOCKET_PATH",
    "SOCKET_ENV",
    "DEFAULT_CONNECT_TIMEOUT",
]
__all__ += _errors.__all__


def describe_close_code(reason: str) -> Optional[str]:
    """A human-readable description of a close reason name (``"reset"`` → "reset by the remote
    host"); ``None`` for an unknown name."""
    if not isinstance(reason, str):
        raise ArgumentTypeError(f"reason must be a str, not {type(reason).__name__}")
    return _machnet.describe_close_code(reason)


def attach(path: Optional[PathLike] = None) -> "Machnet":
    """Attaches this process to the sidecar listening at ``path``.

    ``path`` defaults to ``$MACHNET_SOCKET`` or :data:`DEFAULT_SOCKET_PATH`. Raises
    :class:`SidecarNotFoundError` if nothing listens there, :class:`AttachRefusedError` if the
    sidecar does not allow this user.
    """
    return Machnet(path)


@dataclass(frozen=True)
class FlowStatus:
    """Where a flow stands, as far as the notifications read so far tell."""

    #: ``"open"``, ``"peer_closed"`` (no more messages will arrive; sending still works),
    #: ``"closing"`` (this side called close/abort) or ``"closed"``.
    state: str
    #: For ``"closed"``: the close reason name if the channel still knows it.
    reason: Optional[str] = None


@dataclass(frozen=True)
class Event:
    """Something that happened on a channel (:meth:`Channel.next_event`).

    ``kind`` is one of ``"message"`` (``data`` holds it), ``"accepted"`` (a listener accepted
    ``flow`` on ``port``), ``"peer_closed"`` (no further message will arrive on ``flow``),
    ``"closed"`` (``flow`` is gone; ``reason`` says why) and ``"request_failed"`` (the sidecar
    could not carry out ``request`` — ``"send"``, ``"close"`` or ``"abort"`` — on ``flow``).
    """

    kind: str
    flow: Flow
    data: Optional[bytes] = None
    port: Optional[int] = None
    reason: Optional[str] = None
    request: Optional[str] = None


def _event(raw: Tuple[str, Flow, object]) -> Event:
    kind, flow, detail = raw
    if kind == "message":
        assert isinstance(detail, bytes)
        return Event(kind, flow, data=detail)
    if kind == "accepted":
        assert isinstance(detail, int)
        return Event(kind, flow, port=detail)
    if kind == "closed":
        assert detail is None or isinstance(detail, str)
        return Event(kind, flow, reason=detail)
    if kind == "request_failed":
        assert isinstance(detail, tuple)
        request, reason = detail
        return Event(kind, flow, reason=reason, request=request)
    return Event(kind, flow)


class Machnet:
    """A process's attachment to the sidecar (one control connection).

    Create it with :func:`attach`. Open channels with :meth:`open_channel` (a channel may be
    shared by threads). The control connection closes when this object *and* every channel
    opened from it are closed or garbage-collected (or the process exits); the sidecar then
    detaches the channels gracefully (see :meth:`Channel.close`). Usable as a context manager
    (closing it on exit).
    """

    def __init__(self, path: Optional[PathLike] = None) -> None:
        native = _machnet.Machnet(path)
        self._native: Optional[_machnet.Machnet] = native
        self._socket_path = native.socket_path
        self._local_ip = native.local_ip
        self._engines = native.engines
        self._max_message_len = native.max_message_len

    @property
    def _m(self) -> _machnet.Machnet:
        if self._native is None:
            raise MachnetError("this Machnet attachment is closed")
        return self._native

    @property
    def socket_path(self) -> str:
        """The control socket path used to attach."""
        return self._socket_path

    @property
    def local_ip(self) -> str:
        """The sidecar's IPv4 address: the local address of every flow."""
        return self._local_ip

    @property
    def engines(self) -> int:
        """Number of sidecar engines (valid ``engine`` values are ``0 .. engines - 1``)."""
        return self._engines

    @property
    def max_message_len(self) -> int:
        """Largest message the sidecar carries, in bytes."""
        return self._max_message_len

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._native is None

    def fileno(self) -> int:
        """The control socket's descriptor; it turns readable (hang-up) when the sidecar is gone."""
        return self._m.fileno()

    def is_sidecar_gone(self) -> bool:
        """Whether the sidecar is gone (its control connection hung up). Never blocks."""
        return self._m.is_sidecar_gone()

    def set_control_timeout(self, seconds: Optional[float]) -> None:
        """How long control requests (``open_channel``, ``listen``) wait for the sidecar
        (default 10 s; ``None``: forever)."""
        self._m.set_control_timeout(seconds)

    def open_channel(self, engine: Optional[int] = None) -> "Channel":
        """Opens a channel on ``engine`` (``None``: the sidecar picks one round-robin).

        Raises :class:`InvalidArgumentError` for an engine the sidecar does not have.
        """
        return Channel(self._m.open_channel(engine), self)

    def close(self) -> None:
        """Drops this handle of the attachment. Channels opened from it stay usable (they keep
        the control connection open until they are closed too)."""
        self._native = None

    def __enter__(self) -> "Machnet":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = ", closed" if self.closed else ""
        return f"<machnet.Machnet {self.socket_path!r} local_ip={self.local_ip} engines={self.engines}{state}>"


# ----- asyncio: waiting for descriptors through the event loop -----
#
# The native channel does the waiting protocol: an empty one-look receive (``try_recv``,
# ``next_event(0)``) arms its wait fd. A channel that waited in an event loop keeps one reader on
# that fd there (until closed or used from another loop: no epoll_ctl per message); the callback
# quiets the fd and wakes the waiting tasks to look again. The control socket (shared by the
# channels of one attachment, readable only when the sidecar hangs up) has one reader per loop,
# kept while any channel of the attachment is registered in that loop.


class _ControlWatch:
    """The control socket's reader in one event loop, and the channels relying on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        self.loop = loop
        self.fd = fd
        self.channels: "Set[Channel]" = set()
        loop.add_reader(fd, self._hung_up)

    def _hung_up(self) -> None:
        # The sidecar hung up: stop watching and wake every waiter (they see SidecarGoneError).
        self._remove()
        channels, self.channels = self.channels, set()
        for ch in channels:
            ch._control = None
            ch._kick()

    def release(self, ch: "Channel") -> None:
        self.channels.discard(ch)
        if not self.channels:
            self._remove()

    def _remove(self) -> None:
        table = _controls.get(self.loop)
        if table is not None and table.get(self.fd) is self:
            del table[self.fd]
            if not self.loop.is_closed():
                self.loop.remove_reader(self.fd)


_controls: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Dict[int, _ControlWatch]]" = (
    weakref.WeakKeyDictionary()
)


class Channel:
    """A shared-memory channel to one sidecar engine: connect, listen, send and receive.

    Open it with :meth:`Machnet.open_channel`. Any number of threads and asyncio tasks may use
    a channel at once; each message is delivered to exactly one receiver. Its ``*_async``
    methods are meant for one event loop at a time (the channel's reader moves to the loop
    that waited last). Flows belong to the channel that created or accepted them. Closing the channel (or
    leaving its ``with`` block, or the process exiting) is graceful: every message whose
    :meth:`send` returned is still delivered, then its flows close (docs/CHANNEL.md §5).
    :meth:`abort` aborts them instead.

    Blocking calls (:meth:`recv`, :meth:`next_event`, :meth:`connect`, and :meth:`send` under
    back-pressure) release the GIL while they wait, and :meth:`recv` and :meth:`next_event`
    wake up regularly to let Ctrl-C interrupt them.
    """

    def __init__(self, native: _machnet.Channel, machnet: Machnet) -> None:
        self._ch = native
        self._machnet = machnet
        # Futures of asyncio tasks waiting on this channel (woken together to look again).
        self._waiters: Set[asyncio.Future[None]] = set()
        # The loop whose reader watches the wait fd, and the control socket's watch.
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._control: Optional[_ControlWatch] = None
        self._efd = -1

    def _kick(self) -> None:
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)

    # ----- information -----

    @property
    def id(self) -> int:
        """The sidecar's id of this channel."""
        return self._ch.id

    @property
    def engine(self) -> int:
        """The engine serving this channel."""
        return self._ch.engine

    @property
    def max_message_len(self) -> int:
        """Largest message this channel carries, in bytes."""
        return self._ch.max_message_len

    @property
    def machnet(self) -> Machnet:
        """The attachment this channel was opened from."""
        return self._machnet

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._ch.closed

    def fileno(self) -> int:
        """The channel's wait fd, for your own poll loop: an empty :meth:`try_recv` or
        ``next_event(0)`` arms it, as does :meth:`arm_wakeup` when it returns ``False``; then
        wait for this descriptor (and :meth:`Machnet.fileno` for hang-up). Do not read it."""
        return self._ch.fileno()

    def arm_wakeup(self) -> bool:
        """Prepares to wait on :meth:`fileno`. Returns ``True`` if notifications are already
        waiting (do not wait: call :meth:`try_recv`/:meth:`next_event`), ``False`` if the wait fd
        will turn readable when something arrives."""
        return self._ch.arm_wakeup()

    def flows(self) -> List[Flow]:
        """The flows of this channel that are not closed yet."""
        return self._ch.flows()

    def flow_status(self, flow: Flow) -> FlowStatus:
        """Where ``flow`` stands (a flow of another channel is reported closed)."""
        state, reason = self._ch.flow_status(flow)
        return FlowStatus(state, reason)

    def set_busy_poll(self, seconds: Optional[float]) -> None:
        """Spin up to ``seconds`` checking for messages before sleeping (``None`` or 0: sleep at
        once, the default). Trades a CPU core for latency."""
        self._ch.set_busy_poll(seconds)

    def set_auto_close(self, on: bool) -> None:
        """Whether :meth:`recv` and friends close a flow whose peer closed (default ``True``);
        see the Rust client's ``Channel::set_auto_close``."""
        self._ch.set_auto_close(on)

    # ----- control -----

    def listen(self, port: int) -> None:
        """Accepts connections to Machnet ``port`` (1..65535, outside the sidecar's ephemeral
        range) on this channel. Other channels of this process may listen on the same port: they
        form a listen group, and each new flow is accepted by a member on the sidecar engine
        that owns the flow (docs/CHANNEL.md §2; open one channel per engine to use them all).
        Raises :class:`PortInUseError` if another application owns the port or this channel
        listens on it already."""
        self._ch.listen(port)

    def unlisten(self, port: int) -> None:
        """Stops listening on ``port``; flows already accepted are unaffected."""
        self._ch.unlisten(port)

    def connect(self, ip: Union[str, ipaddress.IPv4Address], port: int, timeout: Timeout = None) -> Flow:
        """Opens a flow to ``ip``:``port`` and waits until it is established (at most
        ``timeout`` seconds, default :data:`DEFAULT_CONNECT_TIMEOUT`).

        Raises :class:`ConnectionRefusedError` if nothing listens there and :class:`TimeoutError`
        if no answer came in time (a flow established later is aborted). ``ip`` may be a str or
        an :class:`ipaddress.IPv4Address`.
        """
        return self._ch.connect(ip, port, timeout)

    def close_flow(self, flow: Flow) -> None:
        """Closes this side of ``flow`` gracefully: messages already sent are delivered first.
        Closing a closed flow does nothing."""
        self._ch.close_flow(flow)

    def abort_flow(self, flow: Flow) -> None:
        """Aborts ``flow`` at once (the peer sees a reset). Aborting a closed flow does nothing."""
        self._ch.abort_flow(flow)

    # ----- data -----

    def send(self, flow: Flow, data: Buffer) -> None:
        """Sends ``data`` (``bytes``, ``bytearray`` or ``memoryview``; 1 byte to
        :attr:`max_message_len`) as one message on ``flow``.

        Waits (GIL released) while the sidecar applies back-pressure, or while another thread
        has a :meth:`loan` out (from the thread holding it, raises :class:`MachnetError`
        ``ERR_MACHNET_WOULD_BLOCK``). Raises
        :class:`InvalidArgumentError` for an empty message, :class:`MessageTooLargeError`,
        :class:`FlowError` subclasses if the flow is closed or reset.
        """
        self._ch.send(flow, data)

    def try_send(self, flow: Flow, data: Buffer) -> bool:
        """Like :meth:`send`, but returns ``False`` instead of waiting when the request ring is
        full (and raises :class:`MachnetError` ``ERR_MACHNET_WOULD_BLOCK`` while a loan of the
        channel is out, see :meth:`loan`)."""
        return self._ch.try_send(flow, data)

    def recv(self, timeout: Timeout = None) -> Message:
        """Waits for the next message on any flow of this channel; returns ``(flow, data)``.

        The GIL is released while waiting. Raises :class:`TimeoutError` when ``timeout`` seconds
        pass first (``None``: wait as long as needed). Accepted flows appear as the flow of
        their first message; flows that end are reflected in :meth:`flow_status`.
        """
        return self._ch.recv(timeout)

    def try_recv(self) -> Optional[Message]:
        """The next message if one is waiting now, else ``None``."""
        return self._ch.try_recv()

    # ----- zero-copy -----

    def loan(self, flow: Flow, size: int, timeout: Timeout = None) -> SendLoan:
        """Lends room for one message of ``size`` bytes (1 to :attr:`max_message_len`) on
        ``flow`` in the channel's request ring: write it in place, then commit it::

            with ch.loan(flow, 4096) as loan:
                n = fill(memoryview(loan))      # or loan.data; at most len(loan) bytes
                loan.commit(n)                  # sends the first n bytes; no copy
            # leaving the block without commit() cancels: nothing is sent

        Waits (GIL released) for ring space, and for a loan another thread has out, at most
        ``timeout`` seconds (``None``: as long as needed), then raises :class:`TimeoutError`.
        One loan per channel is out at a time: other sends wait for it, and a send or loan from
        the thread holding it raises :class:`MachnetError` (code ``ERR_MACHNET_WOULD_BLOCK``).
        Raises like :meth:`send` for a bad size or a closed flow. See :class:`SendLoan`.
        """
        return self._ch.loan(flow, size, timeout)

    def try_loan(self, flow: Flow, size: int) -> Optional[SendLoan]:
        """Like :meth:`loan`, but ``None`` instead of waiting when the request ring is full
        (and :class:`MachnetError` ``ERR_MACHNET_WOULD_BLOCK`` while another loan is out)."""
        return self._ch.try_loan(flow, size)

    def recv_zc(self, timeout: Timeout = None) -> RecvView:
        """Waits for the next message like :meth:`recv` and lends it in place (no copy)::

            with ch.recv_zc() as (flow, data):  # data: a read-only memoryview
                handle(flow, data)               # copy what must outlive the block
            # released here

        One borrowed message per channel is out at a time: a second ``recv_zc`` waits for it
        to be released (from the thread holding it: :class:`MachnetError`
        ``ERR_MACHNET_WOULD_BLOCK``); other receives go on meanwhile. Raises
        :class:`TimeoutError` after ``timeout`` seconds. See :class:`RecvView`.
        """
        return self._ch.recv_zc(timeout)

    def try_recv_zc(self) -> Optional[RecvView]:
        """Like :meth:`recv_zc`, but ``None`` if no message is waiting now (and
        :class:`MachnetError` ``ERR_MACHNET_WOULD_BLOCK`` while another borrowed message is out)."""
        return self._ch.try_recv_zc()

    def next_event(self, timeout: Timeout = None) -> Optional[Event]:
        """The next :class:`Event` of any kind (messages, accepted flows, closes), waiting up to
        ``timeout`` seconds (``None``: as long as needed; 0: do not wait). Returns ``None`` when
        the timeout passed."""
        raw = self._ch.next_event(timeout)
        return None if raw is None else _event(raw)

    def __iter__(self) -> Iterator[Message]:
        """Iterates over received messages (blocking :meth:`recv`) until :meth:`close` is
        called. A channel closed by the sidecar raises :class:`ChannelClosedError`."""
        while True:
            try:
                yield self.recv()
            except ChannelClosedError as e:
                if e.reason == "detached":
                    return
                raise

    # ----- asyncio -----

    def _register(self, loop: asyncio.AbstractEventLoop) -> None:
        """Makes ``loop`` watch this channel's wait fd and its attachment's control socket."""
        self._unregister()
        self._efd = self._ch.fileno()
        loop.add_reader(self._efd, self._on_wait_fd)
        self._loop = loop
        cfd = self._ch.control_fileno()
        table = _controls.setdefault(loop, {})
        watch = table.get(cfd)
        if watch is None:
            watch = table[cfd] = _ControlWatch(loop, cfd)
        watch.channels.add(self)
        self._control = watch

    def _unregister(self) -> None:
        if self._loop is not None:
            if not self._loop.is_closed():
                self._loop.remove_reader(self._efd)
            self._loop = None
        if self._control is not None:
            self._control.release(self)
            self._control = None

    def _on_wait_fd(self) -> None:
        # Quiet the fd (the native side drains and re-arms it) and wake the waiters only if
        # there is something to look at: no stale readiness, no spurious task wake-ups.
        try:
            ready = self._ch.arm_wakeup()
        except MachnetError:
            ready = True  # the waiters see the error themselves
        if ready:
            self._kick()

    async def _wait(self, deadline: Optional[float]) -> bool:
        """Waits until the wait fd or the control socket turns readable; ``False`` if
        ``deadline`` (loop time) passed first. Call after an empty one-look receive."""
        loop = asyncio.get_running_loop()
        first = self._efd < 0
        if self._loop is not loop or self._control is None:
            self._register(loop)
        if first:
            # Empty looks arm the wait fd only once it was asked for: look again first.
            return True
        fut: asyncio.Future[None] = loop.create_future()
        self._waiters.add(fut)
        try:
            if deadline is None:
                await fut
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(fut, remaining)
            except asyncio.TimeoutError:
                return False
            return True
        finally:
            self._waiters.discard(fut)

    @staticmethod
    def _deadline(timeout: Timeout) -> Optional[float]:
        if timeout is None:
            return None
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise ArgumentTypeError(
                f"timeout must be a number of seconds or None, not {type(timeout).__name__}"
            )
        if timeout != timeout or timeout < 0:
            raise InvalidArgumentError(f"timeout must be >= 0 seconds (or None), got {timeout}")
        if timeout == float("inf"):
            return None
        return asyncio.get_running_loop().time() + timeout

    async def recv_async(self, timeout: Timeout = None) -> Message:
        """Awaits the next message: ``flow, data = await ch.recv_async()``.

        Waits through the running event loop (``loop.add_reader`` on the channel's wait fd and on
        the control socket), not on a thread. Raises :class:`TimeoutError` after ``timeout``
        seconds. Several tasks may await the same channel; each message goes to one of them.
        """
        deadline = None if timeout is None else self._deadline(timeout)
        while True:
            msg = self._ch.try_recv()
            if msg is not None:
                return msg
            if not await self._wait(deadline):
                raise TimeoutError(f"no message within {timeout} seconds")

    async def recv_zc_async(self, timeout: Timeout = None) -> RecvView:
        """Awaits the next message like :meth:`recv_async` and lends it in place (see
        :meth:`recv_zc`). Tasks of one thread share the channel's one borrowed message: while
        it is out, this raises :class:`MachnetError` (``ERR_MACHNET_WOULD_BLOCK``) rather than
        waiting for a release that could only come from this thread."""
        deadline = None if timeout is None else self._deadline(timeout)
        while True:
            view = self._ch.try_recv_zc()
            if view is not None:
                return view
            if not await self._wait(deadline):
                raise TimeoutError(f"no message within {timeout} seconds")

    async def connect_async(
        self, ip: Union[str, ipaddress.IPv4Address], port: int, timeout: Timeout = None
    ) -> Flow:
        """Awaits a new flow to ``ip``:``port`` (at most ``timeout`` seconds, default
        :data:`DEFAULT_CONNECT_TIMEOUT`), waiting through the running event loop like
        :meth:`recv_async`. Raises like :meth:`connect`; if the wait times out or the task is
        cancelled, a flow established later is aborted. Messages and events that arrive
        meanwhile are kept for the receiving calls.
        """
        deadline = self._deadline(DEFAULT_CONNECT_TIMEOUT if timeout is None else timeout)
        loop = asyncio.get_running_loop()
        ticket = self._ch.connect_start(ip, port)
        while ticket is None:
            # The request ring is full (rare: it holds a maximum-size message): retry shortly.
            if deadline is not None and loop.time() >= deadline:
                raise TimeoutError(f"connect timed out after {timeout} seconds")
            await asyncio.sleep(0.001)
            ticket = self._ch.connect_start(ip, port)
        answered = False
        try:
            while True:
                try:
                    flow = self._ch.connect_poll(ticket)
                except BaseException:
                    answered = True
                    raise
                if flow is not None:
                    answered = True
                    return flow
                if self._ch.arm_wakeup():
                    # Something other than the answer is waiting for the receivers.
                    await asyncio.sleep(0)
                elif not await self._wait(deadline):
                    raise TimeoutError(f"connect timed out after {timeout} seconds")
        finally:
            if not answered:
                self._ch.connect_abandon(ticket)

    async def next_event_async(self, timeout: Timeout = None) -> Optional[Event]:
        """Awaits the next :class:`Event` (``None`` when ``timeout`` seconds passed first)."""
        deadline = self._deadline(timeout)
        while True:
            raw = self._ch.next_event(0)
            if raw is not None:
                return _event(raw)
            if not await self._wait(deadline):
                return None

    def __aiter__(self) -> AsyncIterator[Message]:
        """``async for flow, data in channel``: received messages until :meth:`close` is called
        (a channel closed by the sidecar raises :class:`ChannelClosedError`)."""
        return self._messages()

    async def _messages(self) -> AsyncIterator[Message]:
        while True:
            try:
                yield await self.recv_async()
            except ChannelClosedError as e:
                if e.reason == "detached":
                    return
                raise

    # ----- lifetime -----

    def close(self) -> None:
        """Detaches the channel gracefully: the sidecar still delivers every message whose
        :meth:`send` returned, then closes the channel's flows (the peers see each flow end after
        its last message; flows still open after the sidecar's linger are aborted) and releases
        the channel. Closing twice does nothing; later calls raise :class:`ChannelClosedError`."""
        self._unregister()
        self._ch.close()
        self._kick()

    def abort(self) -> None:
        """Detaches the channel and aborts its flows at once: messages not yet delivered are
        discarded and the peers see a reset (:class:`ConnectionResetError`). Otherwise like
        :meth:`close`; on a closed channel it does nothing."""
        self._unregister()
        self._ch.close(abort=True)
        self._kick()

    def __enter__(self) -> "Channel":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    async def __aenter__(self) -> "Channel":
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = ", closed" if self.closed else ""
        return f"<machnet.Channel id={self.id} engine={self.engine}{state}>"
