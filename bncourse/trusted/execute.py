"""nbgrader's execution step, made trustworthy: the submission runs sandboxed, the tests run here.

:class:`TrustedExecute` replaces nbgrader's ``Execute`` in ``Autograde.autograde_preprocessors``.
It runs the submission's own cells, in order, in a kernel started in the sandbox
(:mod:`bncourse.trusted.sandbox`). It never sends a test cell to that kernel: the source of each
autograded test cell, taken from the gradebook (the instructor's version, hidden tests
included), runs in this process, with every name the cell takes from the notebook bound to a
stand-in that calls the kernel (:mod:`bncourse.trusted.proxies`). The checks draw their inputs,
compute the reference and compare here, so the cell's outputs, and the score nbgrader's
``SaveAutoGrades`` derives from them, are this process's verdict. A submission that patches
the checks, their modules, imports, comparisons or IPython only changes its own kernel.

Then, for the record, where the trusted check failed, the visible part of the test cell also runs
in the kernel, as plain nbgrader would run it: where that run passes, the report says the
notebook reported a pass the trusted check did not reproduce. The report (``report_path``,
JSON lines) also lists the routes around the checks that the static scan found
(:mod:`bncourse.trusted.scan`) and whether the kernel was sandboxed.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import io
import json
import math
import os
import queue
import time
from pathlib import Path
from typing import Any

import torch
from jupyter_core.utils import ensure_async, run_sync
from nbclient.exceptions import DeadKernelError
from nbformat import NotebookNode
from nbformat.v4 import new_code_cell, new_output
from nbgrader.preprocessors import Execute
from traitlets import Bool, Integer, Unicode

from bncourse.grading.catalogue import BOOK_URL_VARIABLE
from bncourse.grading.guard import notebook_runs_elsewhere
from bncourse.trusted import spare
from bncourse.trusted.proxies import Kernel, KernelError
from bncourse.trusted.sandbox import Sandbox, SandboxUnavailable
from bncourse.trusted.scan import is_tampering, scan_cells

__all__ = ["TrustedExecute", "read_report", "strip_hidden_tests"]


def read_report(path: Path) -> list[dict[str, Any]]:
    """The findings :class:`TrustedExecute` appended to ``path`` (none if it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"


def strip_hidden_tests(source: str) -> str:
    """``source`` without its hidden-test blocks (what the student version shows)."""
    lines, hidden = [], False
    for line in source.splitlines():
        if BEGIN_HIDDEN in line:
            hidden = True
        elif END_HIDDEN in line:
            hidden = False
        elif not hidden:
            lines.append(line)
    return "\n".join(lines)


HISTORY_ARGUMENT = "--HistoryManager.hist_file"
"""nbclient adds this kernel argument when it starts a kernel itself (not a spare)."""

IMPORT_ERRORS = ("ModuleNotFoundError", "ImportError")
"""What a kernel raises when its environment lacks the course package or one of its dependencies."""


class _NoSpec:
    argv: list[str] = []


def _error_output(ename: str, evalue: str, notes: list[str] = ()) -> NotebookNode:
    lines = [f"\x1b[0;31m{ename}\x1b[0m: {evalue}", *notes]
    return new_output("error", ename=ename, evalue=evalue, traceback=lines)


@contextlib.contextmanager
def _book_url(url: str):
    """Links to the book in the checks' messages point to ``url`` meanwhile (if not empty)."""
    saved = os.environ.get(BOOK_URL_VARIABLE)
    if url:
        os.environ[BOOK_URL_VARIABLE] = url
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(BOOK_URL_VARIABLE, None)
        else:
            os.environ[BOOK_URL_VARIABLE] = saved


def _size(content: Any) -> int:
    """About how many bytes a kernel message's content holds (its strings' lengths)."""
    if isinstance(content, str):
        return len(content)
    if isinstance(content, dict):
        return sum(len(k) + _size(v) for k, v in content.items())
    if isinstance(content, (list, tuple)):
        return sum(_size(v) for v in content)
    return 8


def _free_names(source: str) -> set[str]:
    """Names ``source`` reads without binding them itself (what it takes from the notebook)."""
    tree = ast.parse(source)
    loaded, bound = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    return {n for n in loaded - bound if not hasattr(builtins, n)}


class TrustedExecute(Execute):
    """``Execute`` with the submission sandboxed and the test cells run in the grader."""

    compare_in_kernel = Bool(
        True,
        help="Where a trusted check fails, also run the visible part of its test cell in the "
        "kernel, to report notebooks whose own run passes where the trusted check fails.",
    ).tag(config=True)
    report_path = Unicode(
        "", help="Append findings (JSON lines) to this file; empty: log them as warnings."
    ).tag(config=True)
    output_limit = Integer(
        64 * 2**20,
        help="Bytes of output (text, images, widget messages) a notebook's kernel may send the "
        "grader; past it, further output is dropped and the kernel is stopped once the cell "
        "ends, so that no notebook can fill the grader's memory.",
    ).tag(config=True)
    prestart = Bool(
        True,
        help="Start the next notebook's sandboxed kernel while this notebook is graded (see "
        "bncourse.trusted.spare); each kernel still serves one notebook only. bncourse check, "
        "which grades one notebook, turns it off.",
    ).tag(config=True)
    book_url = Unicode(
        "",
        help="Where the course book is published, for the links in the checks' feedback "
        "(default: the BNCOURSE_BOOK_URL environment variable, else html.baseurl of the "
        "course's _config.yml).",
    ).tag(config=True)

    def preprocess(self, nb: NotebookNode, resources: Any = None, km: Any = None):
        self._settings = Sandbox(parent=self)
        reason = self._settings.unavailable()
        if reason and not self._settings.allow_unsandboxed:
            raise SandboxUnavailable(
                f"{reason}. Student code is only graded in a sandbox; set "
                "c.Sandbox.allow_unsandboxed = True (or pass --allow-unsandboxed to bncourse "
                "grade) to grade without one."
            )
        self._sandboxed = reason is None
        info = (resources or {}).get("nbgrader", {})
        self._notebook_id = info.get("notebook", "")
        self._student = info.get("student", "")
        self._tests = self._test_sources(info)
        self._findings: list[dict[str, Any]] = []
        if not self._sandboxed:
            self._finding("unsandboxed", f"graded without a sandbox: {reason}")
        tampering = []
        for cell_index, note in scan_cells(nb, set(self._tests)):
            self._finding("flagged", note, cell=cell_index)
            if is_tampering(note):
                tampering.append(note)
        self._slot = self._sandboxed and spare.take(self._spare_key(nb))
        if self._slot:  # started while the previous notebook was graded (same settings)
            self._settings = self._slot.settings
            self._start_spare(nb)  # this kernel is up: the next one has the whole notebook
        else:
            self._slot = spare.new_slot(self._settings)
        try:
            slot = self._slot
            self._kernel = Kernel(self._in_kernel, slot.requests, slot.responses)
            self._kernel.tampering = "; ".join(tampering) or None
            self._namespace: dict[str, Any] = {"__name__": "__bncourse_tests__"}
            self._remote: set[str] = set()
            self._dead: str | None = None
            self._primed = False
            self._broken = False  # the kernel cannot import the grader: nothing to compare
            self._deadline = time.monotonic() + self._settings.notebook_timeout
            self._output_bytes, self._flooded = 0, False
            self._index = 0
            rng = torch.get_rng_state()  # a kernel's answers set it: give it back for classmates
            try:
                with _book_url(self.book_url):
                    return super().preprocess(nb, resources, km)
            finally:
                torch.set_rng_state(rng)
                self._kernel.close()
                self._write_report()
        finally:
            self._slot.remove()

    # -- the kernel ---------------------------------------------------------------------------

    def create_kernel_manager(self):
        if not self._sandboxed:
            return super().create_kernel_manager()
        self.kernel_name = self._kernel_name(self.nb)
        if self._slot.km is None:
            self._slot.km = self._slot.manager(self.kernel_name, self.config)
        self.km = self._slot.km  # a spare kernel is already started: nbclient only connects
        return self.km

    def _kernel_name(self, nb: NotebookNode) -> str:
        return self.kernel_name or nb.metadata.get("kernelspec", {}).get("name") or "python3"

    def _spare_key(self, nb: NotebookNode) -> tuple:
        """What a spare kernel must have been started with to serve the notebook ``nb``."""
        limits = sorted(
            (k, v) for k, v in self._settings.trait_values(config=True).items() if k != "uid"
        )
        return (self._kernel_name(nb), tuple(self._kernel_arguments()), tuple(limits))

    def _kernel_arguments(self) -> list[str]:
        """The kernel's extra arguments, less the history file nbclient adds when it starts one."""
        return [a for a in self.extra_arguments if not a.startswith(HISTORY_ARGUMENT)]

    def _start_spare(self, nb: NotebookNode) -> None:
        """Start the next notebook's kernel now, while this one runs (see ``prestart``)."""
        # Fresh settings, not self._settings: this kernel's slot has set its uid there, and the
        # spare's slot must pick the process's other sandbox user.
        settings = Sandbox(parent=self)
        if self.prestart and self._sandboxed and not settings.uid:  # a fixed uid: no second user
            spare.start_spare(
                self._spare_key(nb),
                settings,
                self._kernel_name(nb),
                self.config,
                self._kernel_arguments(),
            )

    def _in_kernel(self, code: str) -> None:
        """Run one line in the kernel for a stand-in; KernelError if it does not complete.

        Straight on the kernel's shell channel, not as a notebook cell: a check calls its
        function dozens of times, and nbclient's per-cell bookkeeping would cost more than the call.
        """
        remaining = self._time_left()
        timeout = min(self.timeout or remaining, remaining)
        reply = self._run_sync(self._request_reply, code, timeout)
        content = reply.get("content", {})
        if content.get("status") != "ok":
            raise KernelError(
                f"the notebook's kernel did not answer the grader ({content.get('ename')}: "
                f"{content.get('evalue')})"
            )

    def _prime(self) -> None:
        """Import the kernel's side of the grader before any cell of the notebook runs.

        No student code has run yet, so a kernel that cannot import the course package or torch
        is the grader's environment, not the submission: that is reported as such (kind
        ``environment``) for ``bncourse grade`` to refuse the scores. Any other failure is graded
        as it goes.
        """
        remaining = self._time_left()
        try:
            reply = self._run_sync(
                self._request_reply,
                f"import {spare.KERNEL_SIDE}",
                min(self.timeout or 60, remaining),
            )
        except KernelError:
            return
        content = reply.get("content", {})
        if content.get("status") == "ok" or content.get("ename") not in IMPORT_ERRORS:
            return
        self._broken = True
        python = (getattr(self.km, "kernel_spec", None) or _NoSpec).argv[:1] or ["?"]
        self._finding(
            "environment",
            f"the grading kernel {self.kernel_name!r} ({python[0]}) cannot import the course's "
            f"grader: {content.get('ename')}: {content.get('evalue')}. This is the grader's "
            "environment, not the submission (no cell of it had run). Fix: install bncourse "
            "with its dependencies into the Python that kernel runs (see `jupyter kernelspec "
            "list`), or set c.Execute.kernel_name to a kernel of the environment bncourse is "
            "installed in, then grade again.",
        )

    async def _request_reply(self, code: str, timeout: float) -> dict:
        msg_id = self.kc.execute(code, silent=True, store_history=False, stop_on_error=False)
        deadline = time.monotonic() + timeout
        idle = False  # whether the kernel said it is idle after this request
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                with contextlib.suppress(Exception):
                    await ensure_async(self.km.interrupt_kernel())
                raise KernelError(f"the notebook's kernel did not answer within {timeout:.0f} s")
            idle = await self._drain_iopub(msg_id) or idle
            try:
                msg = await ensure_async(self.kc.get_shell_msg(timeout=min(left, 0.1)))
            except queue.Empty:
                if not await ensure_async(self.km.is_alive()):
                    self._dead = "the kernel died (os._exit, a crash or out of memory)"
                    raise KernelError(self._dead) from None
                continue
            if msg.get("parent_header", {}).get("msg_id") == msg_id:
                if not idle:
                    await self._drain_iopub(msg_id, until=deadline)
                return msg

    async def _drain_iopub(self, msg_id: str, until: float | None = None) -> bool:
        """Read and drop what the kernel published while a check talks to it on the shell
        channel (no cell asked for it), counted against the notebook's output bound: unread, it
        would pile up in the grader's memory. Past the bound the kernel is stopped.

        Reads what is there now, or with ``until`` (a time.monotonic), waits for more until the
        kernel says it is idle after request ``msg_id`` (all that the request published comes
        before). Returns whether that idle status was read.
        """
        while True:
            wait = 0.0 if until is None else min(max(until - time.monotonic(), 0.0), 0.1)
            try:
                msg = await ensure_async(self.kc.get_iopub_msg(timeout=wait))
            except queue.Empty:
                if until is None or time.monotonic() >= until:
                    return False
                continue
            if (
                msg.get("msg_type") == "status"
                and msg.get("content", {}).get("execution_state") == "idle"
                and msg.get("parent_header", {}).get("msg_id") == msg_id
            ):
                return True
            if self._over_output_limit(msg):
                note = self._output_limit_note(" while it was checked; its kernel was stopped")
                self._dead = note
                self._finding("killed", note)
                with contextlib.suppress(Exception):
                    await self._shutdown_now()
                raise KernelError(note)

    def _run_in_kernel(self, source: str) -> NotebookNode:
        remaining = self._time_left()
        cell = new_code_cell(source)
        saved, notebook_cell = self.timeout, self.nb.cells[self._index]
        self.timeout = int(max(1, min(saved or remaining, remaining)))
        try:
            self.execute_cell(cell, self._index, store_history=False)
        except DeadKernelError:
            self._dead = "the kernel died (os._exit, a crash or out of memory)"
            raise KernelError(self._dead) from None
        finally:
            self.timeout = saved
            self.nb.cells[self._index] = notebook_cell  # nbclient stores the cell it ran there
        return cell

    def _time_left(self) -> float:
        """Seconds the notebook has left; KernelError if its kernel is gone or its time is up."""
        if self._dead:
            raise KernelError(self._dead)
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            self._kill_at_limit()
            raise KernelError(self._dead)
        return remaining

    def _kill_at_limit(self) -> None:
        """Stop the notebook: it ran past its wall-clock limit."""
        self._kill(f"the notebook ran past its time limit of {self._settings.notebook_timeout} s")

    def _kill(self, why: str) -> None:
        self._dead = why
        with contextlib.suppress(Exception):
            self._finding("killed", why)
            if self.km is not None:
                self._run_sync(self._shutdown_now)

    async def _shutdown_now(self) -> None:
        await ensure_async(self.km.shutdown_kernel(now=True))

    @staticmethod
    def _run_sync(function, *args):
        """Call the coroutine function ``function`` from this synchronous code."""
        return run_sync(function)(*args)

    # -- cells --------------------------------------------------------------------------------

    def preprocess_cell(self, cell: NotebookNode, resources: Any, index: int):
        self._index = index
        if not self._primed and not self._dead:
            self._primed = True
            self._prime()
            if not spare.started():
                self._start_spare(self.nb)  # after this kernel's start, not competing with it
        grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if cell.cell_type == "code" and grade_id in self._tests:
            self._check_cell(cell, grade_id)
            return cell, self.resources
        if cell.cell_type != "code" or not cell.source.strip():
            return super().preprocess_cell(cell, resources, index)
        if self._dead:
            cell.outputs = [
                _error_output("KernelNotRunning", f"this cell did not run: {self._dead}")
            ]
            return cell, self.resources
        if time.monotonic() > self._deadline:
            self._kill_at_limit()
            cell.outputs = [_error_output("NotebookTimeout", self._dead)]
            return cell, self.resources
        saved = self.timeout
        self.timeout = max(1, math.ceil(min(saved or 1e9, self._deadline - time.monotonic())))
        try:
            result = super().preprocess_cell(cell, resources, index)
            if time.monotonic() >= self._deadline:  # the cell ran into the notebook's limit
                self._kill_at_limit()
            elif self._flooded and not self._dead:
                self._kill(f"cell {index} sent more output than the grader keeps")
            return result
        except DeadKernelError:
            self._dead = "the kernel died (os._exit, a crash or out of memory)"
            self._finding("killed", f"cell {index}: {self._dead}", cell=index)
            cell.outputs.append(_error_output("DeadKernelError", self._dead))
            return cell, self.resources
        finally:
            self.timeout = saved

    def process_message(self, msg: dict, cell: NotebookNode, cell_index: int):
        """nbclient's handling of a kernel message, with the notebook's output bounded."""
        if msg.get("msg_type") not in ("status", "execute_input"):
            if self._over_output_limit(msg):
                if not self._flooded:
                    self._flooded = True
                    note = self._output_limit_note("; the rest was dropped and its kernel stopped")
                    cell.outputs.append(_error_output("OutputLimit", note))
                    self._finding("killed", f"cell {cell_index}: {note}", cell=cell_index)
                return None
        return super().process_message(msg, cell, cell_index)

    def _over_output_limit(self, msg: dict) -> bool:
        """Count what a kernel message carries against the notebook's output bound; whether the
        notebook is now past it."""
        self._output_bytes += _size(msg.get("content"))
        return self._output_bytes > self.output_limit

    def _output_limit_note(self, rest: str) -> str:
        """What the notebook's feedback and the findings say when it passed the output bound."""
        return f"the notebook sent more than {self.output_limit / 2**20:g} MiB of output{rest}"

    def _check_cell(self, cell: NotebookNode, grade_id: str) -> None:
        source = self._tests[grade_id]
        cell.source = source
        cell.outputs = self._run_trusted(source, grade_id)
        cell.execution_count = None
        trusted_passed = not any(o.get("output_type") == "error" for o in cell.outputs)
        if trusted_passed or not self.compare_in_kernel or self._dead or self._broken:
            return  # only a failed check can have been reported as a pass
        visible = strip_hidden_tests(source)
        try:
            kernel_cell = self._run_in_kernel(visible)
        except KernelError:
            return
        kernel_passed = not any(o.get("output_type") == "error" for o in kernel_cell.outputs)
        if kernel_passed and not trusted_passed:
            self._finding(
                "disagreement",
                f"{grade_id}: the notebook reported a pass that the trusted check did not "
                "reproduce",
                cell=grade_id,
            )

    def _run_trusted(self, source: str, grade_id: str) -> list[NotebookNode]:
        """Run a test cell here, the notebook's names bound to stand-ins; its outputs."""
        out, err = io.StringIO(), io.StringIO()
        outputs: list[NotebookNode] = []
        try:
            wanted = {
                n for n in _free_names(source) if n not in self._namespace or n in self._remote
            }
            found = self._kernel.lookup(sorted(wanted)) if wanted else {}
            for name in wanted:
                if name in found:
                    self._namespace[name] = found[name]
                    self._remote.add(name)
                elif name in self._remote:
                    del self._namespace[name]
                    self._remote.discard(name)
            code = compile(source, f"<test cell {grade_id}>", "exec")
            with (
                contextlib.redirect_stdout(out),
                contextlib.redirect_stderr(err),
                notebook_runs_elsewhere(),
            ):
                exec(code, self._namespace)  # the instructor's test code, never the student's
        except KernelError as error:
            outputs.append(_error_output("KernelError", str(error)))
        except Exception as error:  # a failed check, or the student's error brought back
            notes = [str(n) for n in getattr(error, "__notes__", [])]
            outputs.append(_error_output(type(error).__name__, str(error), notes))
        if err.getvalue():  # nbgrader zeroes a test cell with stderr: the grader's warnings go
            self.log.debug("grader's stderr in %s: %s", grade_id, err.getvalue())  # to the log
        printed = (
            [new_output("stream", name="stdout", text=out.getvalue())] if out.getvalue() else []
        )
        return printed + outputs

    # -- what the gradebook does not hold -----------------------------------------------------

    def _test_sources(self, info: dict[str, Any]) -> dict[str, str]:
        """grade_id -> the instructor's source of every autograded test cell of this notebook."""
        from nbgrader.api import Gradebook, MissingEntry

        sources: dict[str, str] = {}
        course_id = self.config.get("CourseDirectory", {}).get("course_id", "default_course")
        with Gradebook(info["db_url"], course_id) as gb:
            try:
                notebook = gb.find_notebook(info["notebook"], info["assignment"])
            except MissingEntry:
                return sources
            for cell in notebook.grade_cells:
                if cell.cell_type != "code":
                    continue
                source = gb.find_source_cell(cell.name, info["notebook"], info["assignment"])
                solution = [s for s in notebook.solution_cells if s.name == cell.name]
                if not solution:
                    sources[cell.name] = source.source
        return sources

    def _finding(self, kind: str, note: str, cell: Any = None) -> None:
        self._findings.append(
            {"notebook": self._notebook_id, "kind": kind, "note": note, "cell": cell}
        )

    def _write_report(self) -> None:
        if not self.report_path:
            for f in self._findings:
                self.log.warning("%s (%s): %s", self._notebook_id, f["kind"], f["note"])
            return
        with open(self.report_path, "a", encoding="utf-8") as handle:
            for f in self._findings:
                handle.write(json.dumps(f) + "\n")
        os.chmod(self.report_path, 0o644)
