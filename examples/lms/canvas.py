# nbgrader_config.py lines for `nbgrader zip_collect` of a Canvas "Download Submissions" zip.
#
# Canvas names each file <name>_<user id>_<submission id>_<uploaded file name>, with LATE after
# the name when the submission came after the due date, and -1, -2, ... before the extension
# when the student uploaded a file of that name more than once:
#   smithjane_12345_678901_ps01_batchnorm.ipynb
#   smithjane_LATE_12345_678901_ps01_batchnorm.ipynb
#   smithjane_12345_678901_ps01_batchnorm-1.ipynb
# The student id is Canvas's user number (unique, and the ID column of Canvas's gradebook, which
# `bncourse grade --export canvas` fills from it); the notebook keeps its name without the -1.
# The file name says that a submission was late, not when it came: Canvas keeps the time and
# applies its own late policy, so nbgrader gets no timestamp from it.
c = get_config()  # noqa: F821

c.FileNameCollectorPlugin.named_regexp = (
    r".*/(?P<canvas_name>[^/_]+)(?:_LATE|_late)?_(?P<student_id>\d+)_(?P<submission_id>\d+)_"
    r"(?P<file_id>[^/]+?)(?:-\d+)?\.ipynb$"
)
