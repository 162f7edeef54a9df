"""nbgrader configuration: the repository root is the course directory."""

import os

from bncourse.trusted.config import use_trusted_grading

c = get_config()  # noqa: F821 (provided by nbgrader when it loads this file)

_root = os.path.dirname(os.path.abspath(__file__))

c.CourseDirectory.root = _root
c.CourseDirectory.course_id = "bncourse"
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "exercises"
c.CourseDirectory.db_url = "sqlite:///" + os.path.join(_root, "gradebook.db")
# Only notebooks reach students: text twins or helper files next to a solution would be copied
# verbatim (solutions included) into exercises/.
c.CourseDirectory.ignore = [
    ".ipynb_checkpoints",
    "*.pyc",
    "__pycache__",
    "feedback",
    "*.md",
    "*.py",
    "*.txt",
]
# nbgrader's default is 30 s per cell; set it explicitly for autograde and validate alike.
c.Execute.timeout = 120
c.ExecutePreprocessor.timeout = 120
c.Execute.kernel_name = "python3"
c.ExecutePreprocessor.kernel_name = "python3"
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
# A deleted test cell is put back (and graded) instead of silently scoring zero.
c.OverwriteCells.add_missing_cells = True
# Student code runs in a sandboxed kernel (bubblewrap); every autograded test cell runs in the
# grader's process against stand-ins of the notebook's functions, so the score is computed where
# student code never ran, and feedback never shows hidden tests (bncourse/trusted/).
use_trusted_grading(c)
# Limits of each sandbox (see bncourse.trusted.sandbox.Sandbox for all of them).
c.Sandbox.memory_limit = 4 * 2**30  # bytes, for the kernel and everything it starts
c.Sandbox.notebook_timeout = 1200  # wall-clock seconds for a whole notebook
