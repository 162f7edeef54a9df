"""A real Dask cluster on 127.0.0.1 for tests: ``dask scheduler`` and ``dask worker`` processes,
each started in its own empty folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from example_course import BIN, env


@dataclass
class Cluster:
    """The processes of a test cluster; :meth:`stop` ends them all."""

    root: Path
    address: str = ""
    scheduler: subprocess.Popen | None = None
    workers: dict[str, subprocess.Popen] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)

    def _env(self) -> dict[str, str]:
        return {**env(), "PYTHONHASHSEED": "0", **self.extra_env}

    def start_scheduler(self) -> str:
        folder = self.root / "scheduler"
        folder.mkdir(parents=True)
        info = folder / "scheduler.json"
        self.scheduler = subprocess.Popen(
            [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0"]
            + ["--no-dashboard", "--scheduler-file", str(info)],
            cwd=folder,
            env=self._env(),
            stdout=subprocess.DEVNULL,
            stderr=open(folder / "scheduler.log", "w"),
        )
        deadline = time.monotonic() + 60
        while not info.exists() or not info.read_text().strip():
            if self.scheduler.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((folder / "scheduler.log").read_text())
            time.sleep(0.1)
        time.sleep(0.2)
        self.address = json.loads(info.read_text())["address"]
        return self.address

    def start_worker(self, name: str, *args: str) -> Path:
        """Start worker ``name`` in an empty folder of its own; returns that folder."""
        folder = self.root / name
        folder.mkdir(parents=True)
        self.workers[name] = subprocess.Popen(
            [str(BIN / "dask"), "worker", self.address, "--name", name, "--nthreads", "1"]
            + ["--no-dashboard", "--local-directory", str(folder), *args],
            cwd=folder,
            env=self._env(),
            stdout=subprocess.DEVNULL,
            stderr=open(self.root / f"{name}.log", "w"),
            start_new_session=True,
        )
        return folder

    def wait_for_workers(self, n: int, timeout: float = 120) -> None:
        from distributed import Client

        with Client(self.address, timeout=30) as client:
            client.wait_for_workers(n, timeout=timeout)

    def kill(self, name: str) -> None:
        """SIGKILL worker ``name`` and everything it started, as a machine failure would."""
        os.killpg(self.workers[name].pid, signal.SIGKILL)
        self.workers[name].wait(timeout=30)

    def stop(self) -> None:
        for proc in self.workers.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in [*self.workers.values(), self.scheduler]:
            if proc is None:
                continue
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text()
