"""A control group per sandboxed kernel, where the machine lets the grader create one.

Resource limits (``prlimit``) bound each process of a sandbox; a control group bounds all of them
together: the memory of the kernel and of every process it forks, and their number. The group is
made under the grader's own group (cgroup v2, or the ``memory`` and ``pids`` hierarchies of
cgroup v1); where neither can be written (no permission, no delegation) the sandbox runs with
the per-process limits alone, and :func:`KernelCgroup.create` returns None.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from pathlib import Path

__all__ = ["KernelCgroup", "process_alive"]

ROOT = Path("/sys/fs/cgroup")
_counter = itertools.count()


def _own_paths() -> dict[str, str]:
    """Controller (or "" for v2) -> this process's group path, from /proc/self/cgroup."""
    paths = {}
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return paths
    for line in lines:
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    return paths


def process_alive(pid: str) -> bool:
    """Whether the process ``pid`` (a number as text) runs; True when it cannot be told."""
    if not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


class KernelCgroup:
    """The group(s) one kernel runs in, with its memory and process limits."""

    def __init__(self, folders: list[Path]) -> None:
        self.folders = folders

    @classmethod
    def create(cls, memory: int, pids: int) -> KernelCgroup | None:
        """A new group limited to ``memory`` bytes and ``pids`` tasks, or None where none can be made."""
        name = f"bncourse-{os.getpid()}-{next(_counter)}"
        own = _own_paths()
        made: list[Path] = []
        try:
            if (ROOT / "cgroup.controllers").is_file():  # cgroup v2, unified at the root
                folder = ROOT / own.get("", "/").lstrip("/") / name
                folder.mkdir()
                made.append(folder)
                (folder / "memory.max").write_text(str(memory))
                (folder / "memory.swap.max").write_text("0") if (
                    folder / "memory.swap.max"
                ).exists() else None
                (folder / "pids.max").write_text(str(pids))
            else:
                for controller, limit, value in (
                    ("memory", "memory.limit_in_bytes", memory),
                    ("pids", "pids.max", pids),
                ):
                    base = ROOT / controller
                    if not base.is_dir():
                        raise OSError(f"no {controller} hierarchy")
                    folder = base / own.get(controller, "/").lstrip("/") / name
                    folder.mkdir()
                    made.append(folder)
                    (folder / limit).write_text(str(value))
                    swap = folder / "memory.memsw.limit_in_bytes"
                    if swap.exists():
                        swap.write_text(str(value))
        except OSError:
            cls(made).remove()
            return None
        return cls(made)

    @classmethod
    def remove_orphans(cls) -> None:
        """Remove the groups that grading processes which no longer run left behind (killed
        before they could remove them)."""
        own = _own_paths()
        bases = [ROOT / own.get("", "/").lstrip("/")]
        bases += [ROOT / c / own.get(c, "/").lstrip("/") for c in ("memory", "pids")]
        for base in bases:
            for folder in base.glob("bncourse-*-*") if base.is_dir() else ():
                if not process_alive(folder.name.split("-")[1]):
                    cls([folder]).remove()

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` started by a shell that first moves itself into the group(s)."""
        script = " && ".join(f'echo $$ > "${i + 1}"' for i in range(len(self.folders)))
        script += f' && shift {len(self.folders)} && exec "$@"'
        procs = [str(f / "cgroup.procs") for f in self.folders]
        return ["/bin/sh", "-c", script, "sh", *procs, *argv]

    def remove(self) -> None:
        """Kill what is left in the group(s) and delete them."""
        for folder in self.folders:
            for _ in range(50):
                try:
                    pids = [int(p) for p in (folder / "cgroup.procs").read_text().split()]
                except OSError:
                    break
                if not pids:
                    break
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
                time.sleep(0.02)
            try:
                folder.rmdir()
            except OSError:
                pass
