"""The set-up of ``make test`` and ``make book``: Debian packages installed when missing, or a fast
failure that names the command to run (``scripts/system-packages.sh`` and the Makefile's order).

Every case runs the real script against a fake root (``SYSTEM_ROOT``) holding the files that the
packages provide, with fake ``id``, ``sudo`` and ``apt-get`` first on ``PATH`` that log their
arguments: nothing is installed, and the machine's own state does not matter.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "system-packages.sh"
PROVIDES = {
    "bubblewrap": "usr/bin/bwrap",
    "util-linux": "usr/bin/prlimit",
    "libseccomp2": "usr/lib/x86_64-linux-gnu/libseccomp.so.2",
    "chromium": "usr/bin/chromium",
    "postgresql": "usr/lib/postgresql/17/bin/initdb",
}
SYSTEM_PATH = "/usr/bin:/bin"


def _fake_root(tmp_path: Path, present: set[str]) -> Path:
    root = tmp_path / "root"
    for package in present:
        file = root / PROVIDES[package]
        file.parent.mkdir(parents=True, exist_ok=True)
        file.touch()
    root.mkdir(parents=True, exist_ok=True)
    return root


def _fake_bin(tmp_path: Path, *, uid: int, sudo_ok: bool, apt: str | None) -> Path:
    """``id``, ``sudo`` and (unless apt is None) ``apt-get`` that append their calls to calls.log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    log = tmp_path / "calls.log"
    scripts = {
        "id": f'[ "$1" = -u ] && echo {uid}',
        "sudo": (
            f'echo "sudo $*" >> {log}\n' + ('[ "$1" = -n ] && shift\n"$@"' if sudo_ok else "exit 1")
        ),
    }
    if apt is not None:
        scripts["apt-get"] = f'echo "apt-get $*" >> {log}\n{apt}'
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text(f"#!/bin/bash\n{body}\n")
        path.chmod(0o755)
    return bin_dir


def _run(
    tmp_path: Path, target: str, present: set[str], **fakes
) -> tuple[subprocess.CompletedProcess, list[str]]:
    root = _fake_root(tmp_path, present)
    bin_dir = _fake_bin(tmp_path, **fakes)
    env = {"PATH": f"{bin_dir}:{SYSTEM_PATH}", "SYSTEM_ROOT": str(root), "HOME": str(tmp_path)}
    if fakes.get("apt") is None:
        env["PATH"] = f"{bin_dir}:{_path_without_apt(tmp_path)}"
    proc = subprocess.run(
        ["bash", str(SCRIPT), target], env=env, capture_output=True, text=True, timeout=30
    )
    log = tmp_path / "calls.log"
    return proc, log.read_text().splitlines() if log.exists() else []


def _path_without_apt(tmp_path: Path) -> str:
    """A directory with the tools the script uses, but no apt-get."""
    tools = tmp_path / "tools"
    tools.mkdir()
    for tool in ("bash", "env", "cat"):
        os.symlink(shutil.which(tool), tools / tool)
    return str(tools)


ALL = set(PROVIDES)
SANDBOX = {"bubblewrap", "util-linux", "libseccomp2"}


def test_nothing_to_do_when_everything_is_there(tmp_path):
    proc, calls = _run(tmp_path, "test", ALL, uid=1000, sudo_ok=False, apt="exit 0")
    assert proc.returncode == 0, proc.stderr
    assert calls == []


def test_as_root_installs_exactly_the_missing_packages(tmp_path):
    proc, calls = _run(tmp_path, "test", SANDBOX, uid=0, sudo_ok=False, apt="exit 0")
    assert proc.returncode == 0, proc.stderr
    assert calls == ["apt-get update -qq", "apt-get install -y -qq chromium postgresql"]
    assert "installing chromium postgresql with apt-get" in proc.stderr


def test_through_sudo_when_not_root(tmp_path):
    proc, calls = _run(tmp_path, "test", ALL - {"bubblewrap"}, uid=1000, sudo_ok=True, apt="exit 0")
    assert proc.returncode == 0, proc.stderr
    assert "apt-get install -y -qq bubblewrap" in calls
    assert any(
        c.startswith("sudo env DEBIAN_FRONTEND=noninteractive apt-get install") for c in calls
    )


def test_without_root_or_sudo_fails_with_the_command_to_run(tmp_path):
    start = time.monotonic()
    proc, calls = _run(tmp_path, "test", {"bubblewrap"}, uid=1000, sudo_ok=False, apt="exit 0")
    assert proc.returncode == 1
    assert "run: sudo apt-get install -y util-linux libseccomp2 chromium postgresql" in proc.stderr
    assert not any(c.startswith("apt-get") for c in calls)
    assert time.monotonic() - start < 10


def test_without_apt_names_the_packages(tmp_path):
    proc, _ = _run(tmp_path, "test", ALL - {"chromium"}, uid=0, sudo_ok=False, apt=None)
    assert proc.returncode == 1
    assert "make test needs chromium (Debian package names)" in proc.stderr


def test_a_failing_apt_get_is_reported_with_the_command(tmp_path):
    proc, _ = _run(tmp_path, "test", ALL - {"postgresql"}, uid=0, sudo_ok=False, apt="exit 100")
    assert proc.returncode == 1
    assert "apt-get could not install postgresql; run: apt-get install -y postgresql" in proc.stderr


def test_the_book_needs_only_the_sandbox(tmp_path):
    proc, calls = _run(tmp_path, "book", SANDBOX, uid=1000, sudo_ok=False, apt="exit 0")
    assert proc.returncode == 0, proc.stderr
    assert calls == []
    proc, _ = _run(tmp_path / "again", "book", set(), uid=1000, sudo_ok=False, apt="exit 0")
    assert "run: sudo apt-get install -y bubblewrap util-linux libseccomp2" in proc.stderr


def test_an_unknown_target_is_refused(tmp_path):
    proc, _ = _run(tmp_path, "docs", ALL, uid=0, sudo_ok=False, apt="exit 0")
    assert proc.returncode == 2
    assert "unknown target 'docs' (expected book or test)" in proc.stderr


@pytest.mark.parametrize("target", ["test", "book"])
def test_make_checks_the_packages_before_the_slow_set_up(tmp_path, target):
    """``make test``/``make book`` on a machine that lacks a package and cannot install it stop
    within seconds, before creating the virtual environment."""
    (tmp_path / "run").mkdir()
    root = _fake_root(tmp_path / "run", set())
    bin_dir = _fake_bin(tmp_path / "run", uid=1000, sudo_ok=False, apt="exit 0")
    venv = tmp_path / "venv"
    env = {
        "PATH": f"{bin_dir}:{SYSTEM_PATH}",
        "SYSTEM_ROOT": str(root),
        "HOME": str(tmp_path),
    }
    start = time.monotonic()
    proc = subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), target, f"VENV={venv}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert f"error: make {target} needs" in proc.stderr
    assert "run: sudo apt-get install -y bubblewrap" in proc.stderr
    assert not venv.exists(), "the virtual environment was set up before the check"
    assert time.monotonic() - start < 15


def test_ci_runs_the_readme_test_command_and_nothing_else():
    lines = [
        line
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[-1] == "make test"
    assert not any("apt-get" in line or "system-packages" in line for line in lines)
    assert "make test" in (ROOT / "README.md").read_text()
