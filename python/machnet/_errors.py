"""The exception hierarchy of :mod:`machnet`.

Everything the package raises on purpose derives from :class:`MachnetError`, whose ``code`` names
the error's kind as every Machnet binding does (see there). Several classes also
derive from the matching built-in exception, so generic handlers keep working::

    MachnetError
    ├── InvalidArgumentError (ValueError)       a bad value: port 0, negative timeout, empty message...
    │   └── MessageTooLargeError                longer than the sidecar's maximum message
    ├── ArgumentTypeError (TypeError)           a value of the wrong type
    ├── TimeoutError (builtins.TimeoutError)    recv/connect/a control request ran out of time
    ├── SidecarNotFoundError (ConnectionError)  attach: no sidecar listens on the socket path
    ├── SidecarGoneError (ConnectionError)      the sidecar exited, crashed or is shutting down
    ├── AttachRefusedError (PermissionError)    the sidecar refused this user/group or version, or
    │                                           (encryption) a connect to a host outside its
    │                                           allow-list of peer keys
    ├── FlowError                               a flow failed or ended (``reason`` says why)
    │   ├── ConnectionRefusedError (builtins.ConnectionRefusedError)
    │   ├── ConnectionResetError (builtins.ConnectionResetError)   reset, aborted, peer timed out
    │   └── FlowClosedError                     the flow is closed (gracefully, or by this app)
    ├── ChannelClosedError                      the channel was closed (``reason`` says why)
    ├── ChannelBusyError (RuntimeError)         no longer raised (channels are thread-safe)
    ├── PortInUseError                          listen: another application owns the port
    └── ProtocolError                           the sidecar broke the protocol
"""

from __future__ import annotations

import builtins
from typing import Optional

__all__ = [
    "MachnetError",
    "InvalidArgumentError",
    "MessageTooLargeError",
    "ArgumentTypeError",
    "TimeoutError",
    "SidecarNotFoundError",
    "SidecarGoneError",
    "AttachRefusedError",
    "FlowError",
    "ConnectionRefusedError",
    "ConnectionResetError",
    "FlowClosedError",
    "ChannelClosedError",
    "ChannelBusyError",
    "PortInUseError",
    "ProtocolError",
]


class MachnetError(Exception):
    """Base class of every error raised by :mod:`machnet`.

    ``code`` is the stable name of the failure's kind, the same in every Machnet binding
    (``"ERR_MACHNET_CONNECTION_REFUSED"``, ``"ERR_MACHNET_FLOW_CLOSED"``...; Node.js ``err.code``,
    C# ``CodeName``, Go ``Error.Code``), or ``None`` for conditions of this package alone
    (:class:`ChannelBusyError`, :class:`ArgumentTypeError`).
    """

    code: Optional[str] = None


class InvalidArgumentError(MachnetError, ValueError):
    """An argument has a value the operation cannot accept (out of range, empty, malformed)."""


class MessageTooLargeError(InvalidArgumentError):
    """The message is longer than the channel's ``max_message_len``."""


class ArgumentTypeError(MachnetError, TypeError):
    """An argument has the wrong type."""


class TimeoutError(MachnetError, builtins.TimeoutError):  # noqa: A001 - deliberate, see module doc
    """The operation did not complete in time (also a built-in :class:`TimeoutError`)."""


class SidecarNotFoundError(MachnetError, builtins.ConnectionError):
    """No sidecar could be reached at the control socket path (is ``machnet`` running?)."""


class SidecarGoneError(MachnetError, builtins.ConnectionError):
    """The sidecar exited, crashed or is shutting down; the attachment is unusable."""


class AttachRefusedError(MachnetError, builtins.PermissionError):
    """The sidecar refused this process (user/group not allowed, or a protocol version mismatch).

    Also raised by ``connect`` when the sidecar encrypts and the remote host is not in its
    allow-list of peer keys, or did not prove the key listed for it (docs/CHANNEL.md,
    "Encryption").
    """


class FlowError(MachnetError):
    """A flow could not be set up, or it ended.

    ``reason`` is the sidecar's close code as a snake_case name (``"refused"``, ``"reset"``,
    ``"aborted"``, ``"timed_out"``, ``"graceful"``...), or ``None`` if unknown.
    """

    def __init__(self, message: str, reason: Optional[str] = None) -> None:
        super().__init__(message)
        self.reason: Optional[str] = reason


class ConnectionRefusedError(FlowError, builtins.ConnectionRefusedError):  # noqa: A001
    """The remote sidecar refused the connection (nothing listens on that port)."""


class ConnectionResetError(FlowError, builtins.ConnectionResetError):  # noqa: A001
    """The flow was reset or aborted (by the peer or the sidecar), or the peer stopped answering."""


class FlowClosedError(FlowError):
    """The flow is closed: gracefully, or this application already closed or aborted it."""


class ChannelClosedError(MachnetError):
    """The channel is closed: by :meth:`machnet.Channel.close`, or by the sidecar.

    ``reason`` names why (``"detached"``, ``"shutdown"``, ``"channel_violation"``) or is ``None``.
    """

    def __init__(self, message: str, reason: Optional[str] = None) -> None:
        super().__init__(message)
        self.reason: Optional[str] = reason


class ChannelBusyError(MachnetError, builtins.RuntimeError):
    """No longer raised: a channel may be used by many threads at once. Kept so that code
    catching it still imports."""


class PortInUseError(MachnetError):
    """The port is taken: by another application (process or user) on this host, or this very
    channel already listens on it. Other channels of this process may share a port (a listen
    group, see :meth:`machnet.Channel.listen`)."""


class ProtocolError(MachnetError):
    """The sidecar answered something the protocol does not allow; the object is unusable."""
