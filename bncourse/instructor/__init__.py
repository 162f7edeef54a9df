"""The instructor workflow: parallel autograding (``bncourse grade``) and the students'
``bncourse check``, both on nbgrader's own course layout and API."""
