"""The ``nbgrader zip_collect`` settings of examples/lms/ on the file names Canvas and Moodle give
submissions in their "download all" zips, late and resubmitted ones included: first nbgrader's own
collector plugin on each name, then ``nbgrader zip_collect`` on a zip of such files."""

from __future__ import annotations

import zipfile
from pathlib import Path

import nbformat
import pytest
from nbgrader.plugins import FileNameCollectorPlugin
from traitlets.config.loader import PyFileConfigLoader

from bncourse.instructor import example_class as ec
from tests.example_course import BIN, run

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "lms"
EXTRACTED = "/course/downloaded/ps01_batchnorm/extracted/submissions"

#: file name in the zip -> (student id, notebook) that zip_collect must file it under
CANVAS = {
    "smithjane_12345_678901_ps01_batchnorm.ipynb": ("12345", "ps01_batchnorm"),
    "smithjane_LATE_12345_678901_ps01_batchnorm.ipynb": ("12345", "ps01_batchnorm"),
    "smithjane_late_12345_678901_ps01_batchnorm.ipynb": ("12345", "ps01_batchnorm"),
    "nguyenbao_23456_789012_ps01_batchnorm-1.ipynb": ("23456", "ps01_batchnorm"),
    "oconnorsean_LATE_34567_890123_ps01_batchnorm-2.ipynb": ("34567", "ps01_batchnorm"),
}
MOODLE = {
    "Jane Smith_12345_assignsubmission_file_ps01_batchnorm.ipynb": ("Jane Smith", "ps01_batchnorm"),
    "Jane Smith_12345_assignsubmission_file/ps01_batchnorm.ipynb": ("Jane Smith", "ps01_batchnorm"),
    "Bao Nguyen_23456_assignsubmission_file_ps01_batchnorm-1.ipynb": (
        "Bao Nguyen",
        "ps01_batchnorm",
    ),
    "Sean O'Connor_3_assignsubmission_file/ps01_batchnorm.ipynb": (
        "Sean O'Connor",
        "ps01_batchnorm",
    ),
}
#: one download per LMS: one file per student (the LMS sends each student's latest submission)
DOWNLOADS = {
    "canvas": [
        "smithjane_LATE_12345_678901_ps01_batchnorm.ipynb",
        "nguyenbao_23456_789012_ps01_batchnorm-1.ipynb",
        "oconnorsean_34567_890123_ps01_batchnorm.ipynb",
    ],
    "moodle": [
        "Jane Smith_12345_assignsubmission_file/ps01_batchnorm.ipynb",
        "Bao Nguyen_23456_assignsubmission_file/ps01_batchnorm-1.ipynb",
        "Sean O'Connor_3_assignsubmission_file/ps01_batchnorm.ipynb",
    ],
}
#: names that are not a notebook submission of these LMS: skipped, never filed under a wrong id
NOT_SUBMISSIONS = {
    "canvas": ["smithjane_12345_678901_notes.pdf", "ps01_batchnorm.ipynb", "smithjane_x_1_a.ipynb"],
    "moodle": ["Jane Smith_12345_onlinetext_ps01_batchnorm.ipynb", "ps01_batchnorm.ipynb"],
}


def _plugin(lms: str) -> FileNameCollectorPlugin:
    loader = PyFileConfigLoader(f"{lms}.py", path=str(EXAMPLES))
    return FileNameCollectorPlugin(config=loader.load_config())


@pytest.mark.parametrize(
    ("lms", "name", "expected"),
    [("canvas", n, e) for n, e in CANVAS.items()] + [("moodle", n, e) for n, e in MOODLE.items()],
)
def test_the_collector_files_each_lms_name_under_its_student(lms, name, expected) -> None:
    info = _plugin(lms).collect(f"{EXTRACTED}/{name}")
    assert info is not None
    assert (info["student_id"], info["file_id"]) == expected


@pytest.mark.parametrize(
    ("lms", "name"), [(lms, n) for lms, names in NOT_SUBMISSIONS.items() for n in names]
)
def test_the_collector_skips_what_is_not_a_submission(lms, name) -> None:
    assert _plugin(lms).collect(f"{EXTRACTED}/{name}") is None


@pytest.mark.slow
@pytest.mark.parametrize("lms", ["canvas", "moodle"])
def test_zip_collect_files_a_real_download(lms, tmp_path) -> None:
    """One zip as the LMS gives it: late, resubmitted and on-time files of three students."""
    root = ec.make_course(tmp_path / "course")
    release = root / "exercises" / ec.ASSIGNMENT
    release.mkdir(parents=True)
    nbformat.write(ec.source_notebook(), release / f"{ec.ASSIGNMENT}.ipynb")
    with open(root / "nbgrader_config.py", "a") as fh:
        fh.write("\n" + (EXAMPLES / f"{lms}.py").read_text().replace("c = get_config()", ""))
    archive = root / "downloaded" / ec.ASSIGNMENT / "archive"
    archive.mkdir(parents=True)
    expected = {}
    with zipfile.ZipFile(archive / f"{lms}.zip", "w") as zf:
        for name in DOWNLOADS[lms]:
            student = _plugin(lms).collect(f"{EXTRACTED}/{name}")["student_id"]
            zf.writestr(
                name.replace("ps01_batchnorm", ec.ASSIGNMENT), f'{{"student": "{student}"}}'
            )
            expected[student] = name
    assert len(expected) == len(DOWNLOADS[lms])
    run([str(BIN / "nbgrader"), "zip_collect", ec.ASSIGNMENT, "--force"], cwd=root)
    submitted = root / "submitted"
    assert sorted(p.name for p in submitted.iterdir()) == sorted(expected)
    for student in expected:
        files = sorted(p.name for p in (submitted / student / ec.ASSIGNMENT).iterdir())
        assert files == [f"{ec.ASSIGNMENT}.ipynb"]  # no timestamp: the names carry none
        text = (submitted / student / ec.ASSIGNMENT / f"{ec.ASSIGNMENT}.ipynb").read_text()
        assert f'"student": "{student}"' in text
