"""The next notebook's kernel, started in its sandbox while the current notebook is graded.

Starting a sandboxed kernel and importing torch and the grader's side in it takes about as long
as running a whole submission; ``bncourse grade`` and ``nbgrader autograde`` grade one notebook
after another in each process, so :class:`~bncourse.trusted.execute.TrustedExecute` (unless its
``prestart`` is off) starts the kernel of the next notebook as soon as the current one is ready,
and the next notebook takes it instead of waiting for a new one.

Isolation is what it would be without the spare: a spare kernel is started before any student is
known, in a sandbox of its own (fresh ``/tmp``, its own folders for sockets, requests and answers,
nothing of any submission); it serves exactly one notebook (:func:`take` hands it out once, and
its kernel is shut down with that notebook); and consecutive kernels of a process run as two
different users (:func:`new_slot`), so the kernel being graded and the spare beside it share no
process budget and no file.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import multiprocessing.util
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jupyter_core.utils import run_sync

from bncourse.trusted.cgroups import KernelCgroup, process_alive
from bncourse.trusted.sandbox import (
    Sandbox,
    SandboxedKernelManager,
    prepare_folder,
    shared_memory_folder,
)

__all__ = ["KernelSlot", "new_slot", "start_spare", "started", "take", "discard"]

KERNEL_SIDE = "bncourse.trusted.kernel_side"
"""The module a kernel imports to answer the grader."""

PRELOAD = [f"--IPKernelApp.exec_lines=import {KERNEL_SIDE}"]
"""Kernel arguments that import the grader's side (and torch) before the kernel says it is ready,
as the grader would before the first cell: a spare kernel does it while the previous notebook
runs. A failed import is only logged there; the grader's own import then reports it."""


@dataclass
class KernelSlot:
    """A kernel's private folders (in shared memory where there is some) and, once started, its
    manager."""

    folder: Path
    sockets: Path
    responses: Path
    requests: Path
    settings: Sandbox
    km: SandboxedKernelManager | None = None
    key: tuple = ()
    thread: int = 0

    def manager(self, kernel_name: str, config: Any) -> SandboxedKernelManager:
        """A kernel manager whose kernel will start in this slot's sandbox."""
        km = SandboxedKernelManager(kernel_name=kernel_name, config=config)
        km.configure(
            self.settings,
            sockets=self.sockets,
            writable=[self.responses],
            readable=[self.requests],
            arguments=PRELOAD,
        )
        return km

    def remove(self) -> None:
        """Delete the slot's folders (its kernel must be shut down first)."""
        shutil.rmtree(self.folder, ignore_errors=True)


_uids = iter(range(1 << 62))  # which of the process's two sandbox users the next slot gets


@functools.cache
def _remove_orphans() -> None:
    """Once per process: delete the kernel folders and control groups of grading processes that
    were killed before they could (an out-of-memory kill, a lost cluster worker)."""
    for folder in Path(shared_memory_folder() or tempfile.gettempdir()).glob("bncourse-kernel-*"):
        if not process_alive(folder.name.split("-")[2]):
            shutil.rmtree(folder, ignore_errors=True)
    KernelCgroup.remove_orphans()


def new_slot(settings: Sandbox) -> KernelSlot:
    """Fresh folders for one kernel; with ``settings.uid`` left at 0, the process's two sandbox
    users alternate from slot to slot."""
    _remove_orphans()
    if not settings.uid and settings.drops_privileges:
        settings.uid = settings.sandbox_uid + next(_uids) % 2 * 100_000  # 200000-399999
    folder = Path(
        tempfile.mkdtemp(prefix=f"bncourse-kernel-{os.getpid()}-", dir=shared_memory_folder())
    )
    folder.chmod(0o755)
    requests = folder / "requests"
    requests.mkdir(mode=0o755)
    return KernelSlot(
        folder=folder,
        sockets=prepare_folder(folder / "sockets", settings),
        responses=prepare_folder(folder / "responses", settings),
        requests=requests,
        settings=settings,
    )


_lock = threading.Lock()
_spare: KernelSlot | None = None


def _shutdown(slot: KernelSlot) -> None:
    if slot.km is not None:
        with contextlib.suppress(Exception):
            run_sync(slot.km.shutdown_kernel)(now=True)
    slot.remove()


def discard() -> None:
    """Shut down the spare kernel, if any, and delete its folders."""
    global _spare
    with _lock:
        slot, _spare = _spare, None
    if slot is not None:
        _shutdown(slot)


def start_spare(key: tuple, settings: Sandbox, kernel_name: str, config: Any, extra: list[str]):
    """Start a kernel for the next notebook whose settings equal ``key`` (replacing any other)."""
    global _spare
    discard()
    slot = new_slot(settings)
    try:
        slot.km = slot.manager(kernel_name, config)
        run_sync(slot.km.start_kernel)(extra_arguments=extra)
    except Exception:
        _shutdown(slot)
        return
    slot.key, slot.thread = key, threading.get_ident()
    with _lock:
        _spare = slot


def started() -> bool:
    """Whether a spare kernel is waiting for the next notebook."""
    return _spare is not None


def take(key: tuple) -> KernelSlot | None:
    """The spare kernel, if one started in this thread with settings ``key`` is alive; it is
    handed out once."""
    global _spare
    with _lock:
        slot, _spare = _spare, None
    if slot is None:
        return None
    usable = slot.key == key and slot.thread == threading.get_ident()
    if usable:
        try:
            usable = bool(run_sync(slot.km.is_alive)())
        except Exception:
            usable = False
    if not usable:
        _shutdown(slot)
        return None
    return slot


atexit.register(discard)
# Workers of a process pool leave through os._exit, which skips atexit: multiprocessing's own
# finalizers still run there.
multiprocessing.util.Finalize(None, discard, exitpriority=100)
