"""An nbgrader course folder: find it, load its configuration the way ``nbgrader`` does."""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url
from traitlets.config import Config

CONFIG_FILE = "nbgrader_config.py"
CODE_STUB = "# YOUR CODE HERE\nraise NotImplementedError()"
EXPORT_PLUGIN = "bncourse.instructor.class_grades.PartsCsvExportPlugin"


def apply_grading_settings(c: Config) -> None:
    """This course's grading settings, for its ``nbgrader_config.py`` and for ``bncourse check``.

    Per-cell time limit, kernel, the stub that replaces solutions, deleted test cells put back,
    trusted grading (student code in a sandboxed kernel, test cells in the grader) and the
    sandbox's limits.
    """
    from bncourse.trusted.config import use_trusted_grading

    # nbgrader's default is 30 s per cell; set it explicitly for autograde and validate alike.
    for section in ("Execute", "ExecutePreprocessor"):
        c[section].timeout = 120
        c[section].kernel_name = "python3"
    c.ClearSolutions.code_stub = {"python": CODE_STUB}
    # A deleted test cell is put back (and graded) instead of silently scoring zero.
    c.OverwriteCells.add_missing_cells = True
    use_trusted_grading(c)
    c.Sandbox.memory_limit = 4 * 2**30  # bytes, for the kernel and everything it starts
    c.Sandbox.notebook_timeout = 1200  # wall-clock seconds for a whole notebook
    # `nbgrader export` writes what `bncourse grade` does: a column per graded part.
    c.ExportApp.plugin_class = EXPORT_PLUGIN


def packaged_course(root: Path) -> Course:
    """A course in the empty folder ``root`` with the settings of this course's own folder."""
    config = Config()
    config.CourseDirectory.root = str(root)
    config.CourseDirectory.course_id = "bncourse"
    config.CourseDirectory.source_directory = "solutions"
    config.CourseDirectory.release_directory = "exercises"
    config.CourseDirectory.db_url = "sqlite:///" + str(Path(root) / "gradebook.db")
    apply_grading_settings(config)
    ensure_tools_on_path()
    return Course(root=Path(root).resolve(), config=config)


def ensure_tools_on_path() -> None:
    """Put this Python's ``bin`` first on PATH: nbgrader runs ``alembic`` and ``python3`` kernels."""
    bindir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if path.split(os.pathsep)[0] != bindir:
        os.environ["PATH"] = bindir + os.pathsep + path


def find_course_dir(start: Path | None = None) -> Path:
    """The nearest folder at or above ``start`` (default: the working folder) with nbgrader_config.py."""
    here = Path(start or Path.cwd()).resolve()
    if here.is_file():
        here = here.parent
    for folder in (here, *here.parents):
        if (folder / CONFIG_FILE).is_file():
            return folder
    raise FileNotFoundError(
        f"no {CONFIG_FILE} found in {here} or any folder above it; "
        "pass --course-dir with the nbgrader course folder"
    )


def _shadows_grader(folder: str) -> bool:
    """Whether ``folder`` holds a ``bncourse`` package other than the one running.

    nbgrader puts the course folder first on sys.path, for the course's own plug-ins; here it
    goes last, and not at all where it holds another ``bncourse`` (a clone of the course's
    repository): the processes that grade would import that copy, maybe of another version,
    and the kernels, which import the installed package, would not match them.
    """
    package = Path(folder or os.curdir) / "bncourse"
    running = Path(sys.modules["bncourse"].__file__).resolve().parent
    return package.is_dir() and package.resolve() != running


@dataclass(frozen=True)
class Course:
    """A course folder and the nbgrader configuration that ``nbgrader`` would use in it."""

    root: Path
    config: Config

    @classmethod
    def load(cls, root: Path | str | None = None) -> Course:
        """Load ``root``'s configuration exactly as ``cd root && nbgrader ...`` does."""
        ensure_tools_on_path()
        course_root = find_course_dir(Path(root) if root else None)
        if root and course_root != Path(root).resolve():
            raise FileNotFoundError(f"course_dir {root} has no {CONFIG_FILE}")
        from nbgrader.apps import NbGraderApp

        path = list(sys.path)
        with contextlib.chdir(course_root):
            app = NbGraderApp()
            app.initialize([])
            config = copy.deepcopy(app.config)
            app.clear_instance()
        sys.path[:] = path + [p for p in sys.path if p not in path and not _shadows_grader(p)]
        if "root" not in config.CourseDirectory:
            config.CourseDirectory.root = str(course_root)
        return cls(root=Path(config.CourseDirectory.root).resolve(), config=config)

    def _dir(self, name: str, default: str) -> str:
        return str(self.config.CourseDirectory.get(name, default))

    @property
    def source_dir(self) -> Path:
        return self.root / self._dir("source_directory", "source")

    @property
    def release_dir(self) -> Path:
        return self.root / self._dir("release_directory", "release")

    @property
    def submitted_dir(self) -> Path:
        return self.root / self._dir("submitted_directory", "submitted")

    @property
    def autograded_dir(self) -> Path:
        return self.root / self._dir("autograded_directory", "autograded")

    @property
    def feedback_dir(self) -> Path:
        return self.root / self._dir("feedback_directory", "feedback")

    @property
    def course_id(self) -> str:
        return str(self.config.CourseDirectory.get("course_id", ""))

    @property
    def db_url(self) -> str:
        default = "sqlite:///" + str(self.root / "gradebook.db")
        return str(self.config.CourseDirectory.get("db_url", default) or default)

    @property
    def db_is_sqlite(self) -> bool:
        return make_url(self.db_url).get_backend_name() == "sqlite"

    @property
    def timeout(self) -> int | None:
        """Per-cell execution limit in seconds, as the autograder applies it."""
        for section in ("Execute", "ExecutePreprocessor"):
            if "timeout" in self.config.get(section, {}):
                return self.config[section]["timeout"]
        return 30  # nbgrader's Execute default

    def config_for(self, root: Path, db_url: str | None = None) -> Config:
        """This course's configuration, moved to ``root`` (and ``db_url`` when given)."""
        config = copy.deepcopy(self.config)
        config.CourseDirectory.root = str(root)
        config.CourseDirectory.db_url = db_url or self.db_url
        return config

    def copy_source(self, assignment: str, root: Path) -> Path:
        """Copy the assignment's instructor version into the course folder ``root``."""
        src = self.source_dir / assignment
        if not src.is_dir():
            raise FileNotFoundError(f"assignment {assignment!r} has no source folder {src}")
        dest = Path(root) / self.source_dir.relative_to(self.root) / assignment
        shutil.copytree(src, dest, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
        return dest
