"""Fixtures: real sidecars on the kernel-UDP datapath over loopback, and the Rust echo server.

Layout (no root needed; private control sockets in a temporary directory):

* sidecar ``a`` on 127.0.0.1: the ``machnet`` binary, with ``machnet-echo server`` on port 888
  (and, for the conformance cases, ``machnet-kv server`` on port 900: the ``kv_server`` fixture);
* sidecar ``b`` on 127.0.0.2 (2 engines): the sidecar built into the wheel, started as
  ``python -m machnet sidecar`` — the Python client under test attaches here.

Binaries come from ``$MACHNET_BIN_DIR`` (default: ``$CARGO_TARGET_DIR/release`` or the
repository's ``target/release``); build them with
``cargo build --release -p machnet-sidecar -p machnet-echo -p machnet-kv``.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

import machnet
from harness import IP_A, IP_B, KV_PORT, RaftCluster, Sidecar, start_echo_server, start_kv_server


@pytest.fixture(scope="session")
def tmp_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="machnet-py-"))
    yield d
    if os.environ.get("KEEP_LOGS"):
        print(f"logs in {d}", file=sys.stderr)
    else:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def sidecar_a(tmp_dir: Path) -> Iterator[Sidecar]:
    """The `machnet` binary on 127.0.0.1, with the Rust echo server on port 888."""
    s = Sidecar("a", IP_A, tmp_dir)
    try:
        echo = start_echo_server(s, tmp_dir)
    except BaseException:
        s.stop()
        raise
    yield s
    echo.stop()
    s.stop()


@pytest.fixture(scope="session")
def sidecar_b(tmp_dir: Path) -> Iterator[Sidecar]:
    """The wheel's sidecar (`python -m machnet sidecar`) on 127.0.0.2 with 2 engines."""
    s = Sidecar("b", IP_B, tmp_dir, engines=2, from_wheel=True)
    yield s
    status = s.stop()
    assert status == 0, f"sidecar b did not stop cleanly ({status}):\n{s.log_text()}"


@pytest.fixture(scope="session")
def kv_server(sidecar_a: Sidecar, tmp_dir: Path) -> Iterator[int]:
    """`machnet-kv server` (in-memory store) on sidecar a; yields its Machnet port."""
    kv = start_kv_server(sidecar_a, tmp_dir, KV_PORT)
    yield KV_PORT
    kv.stop()


@pytest.fixture(scope="session")
def raft_cluster(sidecar_a: Sidecar, tmp_dir: Path) -> Iterator[int]:
    """The Raft cluster of ``examples/raft`` (three ``raft-node`` processes with KV front ends)
    on sidecar a; yields the leader's KV port. The binary comes from ``$MACHNET_RAFT_NODE_BIN``
    (ci/python.sh builds it); without it the cases that need the cluster fail."""
    node_bin = os.environ.get("MACHNET_RAFT_NODE_BIN")
    if not node_bin:
        pytest.fail("MACHNET_RAFT_NODE_BIN is not set: run the tests through ci/python.sh")
    cluster = RaftCluster(sidecar_a, tmp_dir, Path(node_bin))
    yield cluster.kv_port
    cluster.stop()


@pytest.fixture
def mb(sidecar_b: Sidecar) -> Iterator[machnet.Machnet]:
    """An attachment to sidecar b."""
    with machnet.attach(sidecar_b.sock) as m:
        yield m


@pytest.fixture
def ma(sidecar_a: Sidecar) -> Iterator[machnet.Machnet]:
    """An attachment to sidecar a (the echo server's host)."""
    with machnet.attach(sidecar_a.sock) as m:
        yield m


@pytest.fixture
def echo_channel(mb: machnet.Machnet, sidecar_a: Sidecar) -> Iterator[machnet.Channel]:
    """A channel on sidecar b (no flows yet)."""
    with mb.open_channel() as ch:
        yield ch


_next_port = [5000 + (os.getpid() % 1000) * 10]


@pytest.fixture
def port() -> int:
    """A Machnet port no other test of this run listens on."""
    _next_port[0] += 1
    return _next_port[0]
