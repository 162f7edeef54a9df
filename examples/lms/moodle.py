# nbgrader_config.py lines for `nbgrader zip_collect` of a Moodle assignment's "Download all
# submissions" zip.
#
# Moodle names each file <full name>_<participant id>_assignsubmission_file_<uploaded file name>,
# or, with "Download submissions in folders" (the default since Moodle 3.1), puts it in a folder
# <full name>_<participant id>_assignsubmission_file/ under its own name:
#   Jane Smith_12345_assignsubmission_file_ps01_batchnorm.ipynb
#   Jane Smith_12345_assignsubmission_file/ps01_batchnorm.ipynb
# The participant id is Moodle's number for the student *in this assignment* (another assignment
# gives another one), so the student id is the full name, spaces included ("Jane Smith"); the
# regexp takes both layouts. Moodle's file names never say that a submission was late: Moodle
# keeps the time and applies the assignment's own rules, so nbgrader gets no timestamp from it.
c = get_config()  # noqa: F821

c.FileNameCollectorPlugin.named_regexp = (
    r".*/(?P<student_id>[^/_]+)_(?P<participant_id>\d+)_assignsubmission_file[_/]"
    r"(?P<file_id>[^/]+?)(?:-\d+)?\.ipynb$"
)
