"""Where student code runs, and how its results reach the grader as data.

:mod:`~bncourse.trusted.sandbox` starts kernels in bubblewrap (:mod:`~bncourse.trusted.spare`
the next one while a notebook is graded); :mod:`~bncourse.trusted.execute`
is the nbgrader preprocessor that runs a submission's own cells in such a kernel and every test
cell in the grader's process, against stand-ins (:mod:`~bncourse.trusted.proxies`) that call the
kernel (:mod:`~bncourse.trusted.kernel_side`) through messages that cannot carry code
(:mod:`~bncourse.trusted.wire`); :mod:`~bncourse.trusted.scan` flags routes around the checks
for review. Depends on :mod:`bncourse.grading` (its guards) and :mod:`bncourse.nn`.
"""
