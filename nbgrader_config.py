"""nbgrader configuration: the repository root is the course directory."""

import os

from bncourse.instructor.course import apply_grading_settings

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
# Time limits, kernel, stubs, restored cells, trusted grading and sandbox limits: the same
# settings `bncourse check` uses for a notebook checked outside this folder.
apply_grading_settings(c)
