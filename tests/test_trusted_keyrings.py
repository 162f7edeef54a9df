"""The kernel keyrings are out of a sandboxed kernel's reach (``bncourse.trusted.seccomp``).

Keyrings are not namespaced: without the filter a kernel could leave a key in its user's keyring
for the next kernel of that user, and read or clear the session keyring of the grader (a login's
or a service's) that every kernel inherits. A grader process that has its own session keyring,
with a key in it, starts a kernel the way grading does and asks it to use the keyrings.
"""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys

import pytest

from bncourse.trusted import sandbox, seccomp
from bncourse.trusted.sandbox import unavailable_reason

GRADER_KEY = b"the grader's own data"

KERNEL_CODE = """
import ctypes, json, os
_libc = ctypes.CDLL(None, use_errno=True)
def _call(name, *args):
    result = _libc.syscall(NUMBERS[name], *args)
    return [result, ctypes.get_errno() if result < 0 else 0]
_session, _user = ctypes.c_long(-3), ctypes.c_long(-4)
try:
    open("/proc/keys").read()
    _listing = 0
except OSError as error:
    _listing = error.errno
print("KEYS" + json.dumps({
    "add_key user": _call("add_key", b"user", b"for-the-next-kernel", b"x", 1, _user),
    "add_key session": _call("add_key", b"user", b"for-the-grader", b"x", 1, _session),
    "find grader's key": _call(
        "keyctl", 10, _session, b"user", b"grader-key", ctypes.c_long(0)),
    "read session keyring": _call(
        "keyctl", 11, _session, ctypes.create_string_buffer(256), 256),
    "clear session keyring": _call("keyctl", 7, _session),
    "request_key": _call("request_key", b"user", b"grader-key", None, ctypes.c_long(0)),
    "/proc/keys": _listing,
}))
"""

GRADER = """
import ctypes, json, sys
from jupyter_client.blocking import BlockingKernelClient
from jupyter_core.utils import run_sync
from bncourse.trusted import seccomp, spare
from bncourse.trusted.sandbox import Sandbox

numbers = {name: seccomp.syscall_number(name) for name in seccomp.BLOCKED}
libc = ctypes.CDLL(None, use_errno=True)
session = ctypes.c_long(-3)
assert libc.syscall(numbers["keyctl"], 1, None) > 0  # a new session keyring of this process
payload = sys.argv[1].encode()
key = libc.syscall(numbers["add_key"], b"user", b"grader-key", payload, len(payload), session)
assert key > 0, ctypes.get_errno()

slot = spare.new_slot(Sandbox())
km = slot.manager("python3", None)
run_sync(km.start_kernel)()
client = BlockingKernelClient(parent=km, **km.get_connection_info(session=True))
client.start_channels()
out = []
try:
    client.wait_for_ready(timeout=180)
    client.execute_interactive(
        f"NUMBERS = {numbers!r}\\n" + sys.argv[2],
        timeout=180,
        output_hook=lambda m: out.append(m["content"].get("text", "")),
    )
finally:
    client.stop_channels()
    run_sync(km.shutdown_kernel)(now=True)
    slot.remove()
buf = ctypes.create_string_buffer(256)
size = libc.syscall(numbers["keyctl"], 11, ctypes.c_long(key), buf, 256)  # KEYCTL_READ
kernel = json.loads("".join(out).split("KEYS", 1)[1].splitlines()[0])
print(json.dumps({"kernel": kernel, "grader's key after": buf.raw[: max(size, 0)].decode()}))
"""


@pytest.mark.slow
@pytest.mark.skipif(unavailable_reason() is not None, reason="no sandbox here")
def test_a_sandboxed_kernel_cannot_use_the_keyrings():
    proc = subprocess.run(
        [sys.executable, "-c", GRADER, GRADER_KEY.decode(), KERNEL_CODE],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    calls = {name: result for name, result in report["kernel"].items() if name != "/proc/keys"}
    assert calls and all(result == [-1, errno.EPERM] for result in calls.values()), calls
    assert report["kernel"]["/proc/keys"] == errno.EACCES  # no listing of anyone's keys
    assert report["grader's key after"] == GRADER_KEY.decode()  # not cleared by the kernel


@pytest.fixture
def no_libseccomp(monkeypatch):
    monkeypatch.setattr(seccomp, "_library", lambda: None)
    seccomp.compiled_filter.cache_clear()
    seccomp.unavailable_reason.cache_clear()
    yield
    monkeypatch.undo()
    seccomp.compiled_filter.cache_clear()
    seccomp.unavailable_reason.cache_clear()


@pytest.mark.skipif(
    sys.platform != "linux" or not (shutil.which("prlimit") and shutil.which("setpriv")),
    reason="the sandbox needs Linux and util-linux",
)
def test_no_sandbox_starts_without_the_filter(no_libseccomp):
    reason = sandbox.unavailable_reason.__wrapped__(sys.executable)  # any executable for bwrap
    assert reason is not None and "libseccomp2" in reason and "pyseccomp" in reason
    with pytest.raises(RuntimeError, match="libseccomp2"):
        seccomp.filter_fd()
