"""Grade an assignment on a Slurm cluster: Dask workers as Slurm jobs (dask-jobqueue).

Run it on a login node, in the course folder, with the course's environment active (it needs
``pip install 'bncourse[cluster]' dask-jobqueue``); the compute nodes need the same environment
and bubblewrap, not the course folder:

    python grade_on_slurm.py ps01_batchnorm --jobs 20
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from dask_jobqueue import SLURMCluster


def make_cluster(queue: str | None = None) -> SLURMCluster:
    """One Dask worker per Slurm job, grading one submission at a time."""
    return SLURMCluster(
        queue=queue,
        cores=1,
        processes=1,
        memory="4GiB",
        walltime="01:00:00",
        job_script_prologue=["source ~/bncourse/.venv/bin/activate"],
        scheduler_options={"dashboard_address": None},
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("assignment")
    parser.add_argument("--jobs", type=int, default=20, help="Slurm jobs (workers) to start")
    parser.add_argument("--queue", default=None, help="Slurm partition")
    args = parser.parse_args()
    with make_cluster(args.queue) as cluster:
        cluster.scale(jobs=args.jobs)
        grade = ["bncourse", "grade", args.assignment, "--scheduler", cluster.scheduler_address]
        return subprocess.run(grade, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
