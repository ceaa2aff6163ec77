"""The sidecar shipped in the wheel (`python -m machnet sidecar`, `machnet-sidecar`)."""

from __future__ import annotations

import shutil
import subprocess
import sys


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_python_m_machnet_sidecar_help() -> None:
    r = run(sys.executable, "-m", "machnet", "sidecar", "--help")
    assert r.returncode == 0, r.stderr
    assert "--local-ip" in r.stdout and "--control-socket" in r.stdout


def test_bad_sidecar_flags_exit_2() -> None:
    r = run(sys.executable, "-m", "machnet", "sidecar", "--no-such-flag")
    assert r.returncode == 2
    assert "--no-such-flag" in r.stderr
    r = run(sys.executable, "-m", "machnet", "sidecar", "--engines", "0")
    assert r.returncode == 2
    assert "engines" in r.stderr


def test_module_usage() -> None:
    r = run(sys.executable, "-m", "machnet")
    assert r.returncode == 2 and "sidecar" in r.stdout
    r = run(sys.executable, "-m", "machnet", "version")
    assert r.returncode == 0 and r.stdout.strip() == __import__("machnet").__version__
    r = run(sys.executable, "-m", "machnet", "frobnicate")
    assert r.returncode == 2


def test_console_script() -> None:
    exe = shutil.which("machnet-sidecar") or str(
        __import__("pathlib").Path(sys.executable).parent / "machnet-sidecar"
    )
    r = run(exe, "--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("machnet")
