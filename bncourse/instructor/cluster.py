"""Grading on a Dask distributed cluster: what travels to the workers and what comes back.

The workers share no filesystem with the instructor. Each task carries one student's submitted
files (a tar archive in memory) and the student's rows of the gradebook (``StudentState``); what
every task needs (the source folder, the released notebooks, a seed gradebook with only the
assignment's definition, the configuration) is one more task, sent once and fetched by each
worker from another. A worker grades in a private folder under its own local directory with the
same code as the process pool
(:func:`bncourse.instructor.worker.grade`, sandbox included) and sends back the graded notebooks,
the feedback pages and the gradebook record as data. The instructor's process stays the only
writer to the gradebook and to the course folder.

A worker that dies mid-grade is Dask's business: the scheduler gives the task to another worker,
and after ``distributed.scheduler.allowed-failures`` deaths (default 3) it gives up with
``KilledWorker``. That submission is then graded once more on its own (see
:func:`grade_on_cluster`) and reported as failed if its workers die again.
"""

from __future__ import annotations

import copy
import io
import os
import shutil
import tarfile
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from traitlets.config import Config

from bncourse.instructor import worker
from bncourse.instructor.gradebook_io import StudentState

LOCAL = "local"
"""The value of ``--cluster`` that starts a ``LocalCluster`` on this machine."""


def pack_tree(folder: Path) -> bytes:
    """The regular files under ``folder`` as an in-memory tar archive; links and devices are left out."""
    folder = Path(folder)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        for dirpath, dirnames, filenames in os.walk(folder):
            here = Path(dirpath)
            dirnames[:] = sorted(d for d in dirnames if not (here / d).is_symlink())
            for name in sorted(filenames):
                path = here / name
                if path.is_symlink() or not path.is_file():
                    continue
                tar.add(path, arcname=str(path.relative_to(folder)), recursive=False)
    return buffer.getvalue()


def unpack_tree(data: bytes, dest: Path) -> Path:
    """Extract an archive made by :func:`pack_tree` into ``dest`` (tarfile's ``data`` filter:
    no absolute paths, no ``..``, no links or devices)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(dest, filter="data")
    return dest


@dataclass
class SharedInputs:
    """What grading any student of the assignment needs; sent to the cluster once, as a task."""

    assignment: str
    config: Config
    source: bytes
    source_subdir: str
    release: bytes | None
    seed: bytes
    expected: dict[str, set[str]]
    feedback: bool = True
    allow_unsandboxed: bool = False


@dataclass
class RemoteJob:
    """One student's part of a task."""

    student: str
    submitted: bytes
    state: StudentState | None = None


@dataclass
class RemoteResult:
    """What a worker sends back: the result, with the graded folders as archives."""

    result: worker.GradeResult
    autograded: bytes | None = None
    feedback: bytes | None = None


def _local_directory() -> Path:
    try:
        from distributed import get_worker

        return Path(get_worker().local_directory)
    except (ImportError, ValueError):
        return Path(tempfile.gettempdir())


def _worker_name() -> str:
    try:
        from distributed import get_worker

        w = get_worker()
        return str(w.name) if str(w.name) != str(w.address) else str(w.address)
    except (ImportError, ValueError):
        return f"pid {os.getpid()}"


def _shared(inputs: SharedInputs) -> SharedInputs:
    return inputs


def grade_remote(job: RemoteJob, shared: SharedInputs) -> RemoteResult:
    """Grade one student on a Dask worker; never raises (a crash is reported in the result)."""
    worker.silence_library_warnings()
    where = _worker_name()
    scratch = Path(
        tempfile.mkdtemp(prefix=f"bncourse-grade-{job.student}-", dir=_local_directory())
    )
    try:
        source = unpack_tree(shared.source, scratch / "source" / shared.assignment)
        release = None
        if shared.release is not None:
            release = unpack_tree(shared.release, scratch / "release" / shared.assignment)
        submitted = unpack_tree(job.submitted, scratch / "submitted" / job.student)
        seed = scratch / "seed.db"
        seed.write_bytes(shared.seed)
        local = worker.GradeJob(
            assignment=shared.assignment,
            student=job.student,
            config=shared.config,
            submitted=submitted,
            source=source,
            source_subdir=shared.source_subdir,
            release=release,
            expected=shared.expected,
            scratch=scratch,
            snapshot=seed,
            feedback=shared.feedback,
            allow_unsandboxed=shared.allow_unsandboxed,
            student_state=job.state,
        )
        result = worker.grade(local)
        result.worker = where
        out = RemoteResult(result=result)
        if result.autograded is not None:
            out.autograded = pack_tree(result.autograded)
        if result.feedback is not None:
            out.feedback = pack_tree(result.feedback)
        result.autograded = result.feedback = result.workdir = None
        return out
    except Exception as exc:  # grading itself never raises; this is the transfer around it
        failed = worker.GradeResult(student=job.student, success=False, worker=where)
        failed.problems.append(f"grading crashed on {where}: {type(exc).__name__}: {exc}"[:300])
        return RemoteResult(result=failed)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def unpack_result(remote: RemoteResult, dest: Path) -> worker.GradeResult:
    """The worker's result with its archives extracted under ``dest`` (on the instructor's side)."""
    result = remote.result
    if remote.autograded is not None:
        result.autograded = unpack_tree(remote.autograded, dest / "autograded")
    if remote.feedback is not None:
        result.feedback = unpack_tree(remote.feedback, dest / "feedback")
    result.workdir = dest
    return result


@contextmanager
def connect(scheduler: str, local_workers: int = 1, log_path: Path | None = None) -> Iterator:
    """A Dask client of the scheduler at ``scheduler``, or of a new ``LocalCluster`` when it is
    :data:`LOCAL` (its workers' stderr goes to ``log_path``); the local cluster is shut down on
    leaving. Connecting waits ``distributed.comm.timeouts.connect`` (default 30 s)."""
    try:
        import dask
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise RuntimeError(
            "grading on a Dask cluster needs the distributed package: pip install 'bncourse[cluster]'"
        ) from exc
    if scheduler == LOCAL:
        # The cores shared between the workers' kernels, as in the process pool (Dask's nanny
        # would give each one thread).
        threads = str(max(1, (os.cpu_count() or 1) // local_workers))
        env = {var: os.environ.get(var, threads) for var in worker.THREAD_VARIABLES}
        with (
            LocalCluster(
                n_workers=local_workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                env=env,
            ) as cluster,
            Client(cluster) as client,
        ):
            client.run(worker.init_worker, None, str(log_path) if log_path else None)
            yield client
    else:
        timeout = dask.config.get("distributed.comm.timeouts.connect")
        with Client(scheduler, timeout=timeout) as client:
            yield client


def _deaths(client, keys: list[str]) -> dict[str, int]:
    """How many times a worker died while running each task (the scheduler's count)."""

    def count(dask_scheduler=None):  # runs on the scheduler; pickled by value
        tasks = dask_scheduler.tasks
        return {k: getattr(tasks[k], "suspicious", 0) for k in keys if k in tasks}

    try:
        return client.run_on_scheduler(count)
    except Exception:  # an older scheduler: the counts are only for the summary
        return {}


@dataclass
class ClusterRun:
    """Where a class was graded and what the cluster did along the way."""

    scheduler: str
    workers: list[str] = field(default_factory=list)


def grade_on_cluster(
    client,
    shared: SharedInputs,
    jobs: list[RemoteJob],
    scratch: Path,
    on_result: Callable[[worker.GradeResult], None],
) -> ClusterRun:
    """Grade ``jobs`` on the cluster of ``client``; ``on_result`` gets each student's result once.

    The scheduler counts a worker's death against every task the worker held, not only the one
    that killed it; so a task it gave up on (``KilledWorker``) is graded once more alone, with no
    other submission beside it, and reported as failed only if its workers die again then.
    """
    from distributed import KilledWorker, as_completed

    run = ClusterRun(scheduler=str(client.scheduler.address))
    run.workers = sorted(
        str(w.get("name", a)) for a, w in client.scheduler_info()["workers"].items()
    )
    token = uuid.uuid4().hex[:8]
    # A task rather than scattered data: if the worker holding it dies, the scheduler computes it
    # again from the task (scattered data would be lost, and every task with it).
    handle = client.submit(_shared, shared, key=f"bncourse-shared-{shared.assignment}-{token}")

    def submit(job: RemoteJob, attempt: int):
        key = f"bncourse-grade-{shared.assignment}-{job.student}-{token}-{attempt}"
        return client.submit(grade_remote, job, handle, key=key, pure=False, retries=0)

    def collect(future, job: RemoteJob, deaths: int) -> worker.GradeResult | int:
        """The result of a finished task, or the number of worker deaths the scheduler gave up
        after (the first time only)."""
        try:
            remote = future.result()
        except KilledWorker as exc:
            if not deaths:
                return exc.allowed_failures + 1
            result = worker.GradeResult(student=job.student, success=False)
            result.retries = deaths + exc.allowed_failures + 1
            result.problems.append(
                f"every worker that graded it died ({result.retries} times, the last "
                f"{exc.allowed_failures + 1} with no other submission beside it); not retried "
                "again (distributed.scheduler.allowed-failures)"
            )
            return result
        except Exception as exc:  # the task could not run at all (lost connection, ...)
            result = worker.GradeResult(student=job.student, success=False)
            result.problems.append(f"the cluster could not grade it: {type(exc).__name__}: {exc}")
            return result
        folder = Path(tempfile.mkdtemp(prefix=f"{job.student}-", dir=scratch))
        result = unpack_result(remote, folder)
        result.retries = deaths + _deaths(client, [future.key]).get(future.key, 0)
        return result

    def deliver(result: worker.GradeResult) -> None:
        head = f"graded on Dask worker {result.worker or '-'}"
        if result.retries:
            head += f" after {result.retries} worker death(s) during earlier attempts"
        result.log = f"{head}\n{result.log}"
        on_result(result)

    futures = {submit(job, 0): job for job in jobs}
    suspects = []
    for future in as_completed(futures):
        job = futures[future]
        result = collect(future, job, 0)
        future.release()
        if isinstance(result, int):
            suspects.append((job, result))
        else:
            deliver(result)
    for job, deaths in suspects:  # one at a time: nothing else runs beside it
        deliver(collect(submit(job, 1), job, deaths))
    return run


def shared_inputs(
    assignment: str,
    config: Config,
    source: Path,
    source_subdir: str,
    release: Path | None,
    seed: Path,
    expected: dict[str, set[str]],
    **options,
) -> SharedInputs:
    """Pack what every task needs (see :class:`SharedInputs`).

    The configuration travels without the gradebook's URL (a database server's password may be
    in it): a worker grades into the seed gradebook, never into the course's.
    """
    config = copy.deepcopy(config)
    config.CourseDirectory.db_url = ""
    return SharedInputs(
        assignment=assignment,
        config=config,
        source=pack_tree(source),
        source_subdir=source_subdir,
        release=pack_tree(release) if release is not None and release.is_dir() else None,
        seed=Path(seed).read_bytes(),
        expected=expected,
        **options,
    )


def with_submission(student: str, submitted: Path, state: StudentState | None) -> RemoteJob:
    """One student's task input."""
    return RemoteJob(student=student, submitted=pack_tree(submitted), state=state)
