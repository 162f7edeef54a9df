"""The seccomp filter of the sandbox: the kernel keyrings' system calls fail with EPERM.

Kernel keyrings are not namespaced: a key added to a user's keyring outlives the kernel that
added it and is read by the next kernel of that user, and a sandboxed process inherits the
session keyring of the grader (a login's or a service's). Like Docker's default profile, the
filter makes ``add_key``, ``request_key`` and ``keyctl`` fail with ``EPERM`` for the kernel and
everything it starts; bubblewrap installs it (``--seccomp FD``) after building the sandbox. The
filter is compiled with libseccomp (through ``pyseccomp``) for the machine's architecture and,
where the processor runs them too, its 32-bit system-call tables (x86 and x32 beside x86-64, ARM
beside AArch64), so a 32-bit program cannot reach the keyrings either.
"""

from __future__ import annotations

import errno
import os
from functools import cache

__all__ = ["BLOCKED", "compiled_filter", "filter_fd", "syscall_number", "unavailable_reason"]

BLOCKED = ("add_key", "request_key", "keyctl")
"""The system calls that fail inside the sandbox."""

MISSING = (
    "libseccomp (the Debian package libseccomp2, with the Python package pyseccomp) is not "
    "installed, so the sandbox's seccomp filter cannot be built: on Debian or Ubuntu run "
    "`sudo apt-get install libseccomp2` and `pip install pyseccomp` (make install does the latter)"
)


def _library():
    """The ``pyseccomp`` module, or None where it or libseccomp is missing."""
    try:
        import pyseccomp
    except (ImportError, OSError, RuntimeError):  # RuntimeError: no libseccomp found
        return None
    return pyseccomp


def _secondary_arches(seccomp) -> list[int]:
    """The other system-call tables a process of the native architecture can use."""
    arch = seccomp.Arch
    native = seccomp.system_arch()
    return {arch.X86_64: [arch.X86, arch.X32], arch.AARCH64: [arch.ARM]}.get(native, [])


@cache
def compiled_filter() -> bytes:
    """The filter as a BPF program, the form ``bwrap --seccomp`` reads."""
    seccomp = _library()
    if seccomp is None:
        raise RuntimeError(MISSING)
    rules = seccomp.SyscallFilter(seccomp.ALLOW)
    for arch in _secondary_arches(seccomp):
        rules.add_arch(arch)
    for name in BLOCKED:
        rules.add_rule(seccomp.ERRNO(errno.EPERM), name)
    read, write = os.pipe()
    try:
        with open(write, "wb", closefd=False) as sink:
            rules.export_bpf(sink)
        os.close(write)
        write = -1
        with open(read, "rb", closefd=False) as source:
            return source.read()
    finally:
        os.close(read)
        if write >= 0:
            os.close(write)


def filter_fd() -> int:
    """A new file descriptor to read the filter from, at its start (close it after the launch)."""
    fd = os.memfd_create("bncourse-seccomp")  # close-on-exec: only pass_fds hands it on
    try:
        os.write(fd, compiled_filter())
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def syscall_number(name: str) -> int:
    """The native number of a system call (the probe tries ``keyctl`` inside the sandbox)."""
    seccomp = _library()
    if seccomp is None:
        raise RuntimeError(MISSING)
    return seccomp.resolve_syscall(seccomp.Arch.NATIVE, name)


@cache
def unavailable_reason() -> str | None:
    """Why the filter cannot be built here, or None."""
    try:
        compiled_filter()
    except (RuntimeError, OSError) as error:
        return MISSING if str(error) == MISSING else f"the seccomp filter failed: {error}"
    return None
