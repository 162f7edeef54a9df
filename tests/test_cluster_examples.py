"""The cluster examples of the chapter for instructors are valid configuration: the Slurm script
builds the job script dask-jobqueue would submit, the Kubernetes file is a DaskCluster resource."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_slurm_example_submits_one_single_threaded_worker_per_job() -> None:
    spec = importlib.util.spec_from_file_location(
        "grade_on_slurm", EXAMPLES / "slurm" / "grade_on_slurm.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with module.make_cluster(queue="short") as cluster:
        script = cluster.job_script()
        address = cluster.scheduler_address
    assert "#SBATCH -p short" in script
    assert "#SBATCH --mem=4G" in script and "#SBATCH -t 01:00:00" in script
    assert "source ~/bncourse/.venv/bin/activate" in script
    assert f"distributed.cli.dask_worker {address}" in script and "--nthreads 1" in script


def test_kubernetes_example_is_a_dask_cluster_with_single_threaded_workers() -> None:
    doc = yaml.safe_load((EXAMPLES / "kubernetes" / "grading-cluster.yaml").read_text())
    assert doc["apiVersion"] == "kubernetes.dask.org/v1" and doc["kind"] == "DaskCluster"
    (worker,) = doc["spec"]["worker"]["spec"]["containers"]
    assert worker["args"][0] == "dask-worker" and worker["args"][-2:] == ["--nthreads", "1"]
    (scheduler,) = doc["spec"]["scheduler"]["spec"]["containers"]
    port = scheduler["ports"][0]
    assert (port["name"], port["containerPort"]) == ("tcp-comm", 8786)
    service = doc["spec"]["scheduler"]["service"]
    assert service["selector"]["dask.org/cluster-name"] == doc["metadata"]["name"]
    assert service["ports"][0]["targetPort"] == "tcp-comm"
