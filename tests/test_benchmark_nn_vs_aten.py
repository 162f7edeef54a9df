"""``benchmarks/nn_vs_aten.py`` runs and prints its table (a smoke test: it times nothing here)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "nn_vs_aten.py"


def _run(*arguments: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    """The benchmark run with ``arguments``; its output as text."""
    return subprocess.run(
        [sys.executable, str(SCRIPT), *arguments],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )


def test_prints_one_row_per_shape_and_mode_with_ratios():
    proc = _run(
        *("--no-compile", "--shapes", "16x4", "2x3x4x4", "--rounds", "1", "--min-run-time", "0.01")
    )
    rows = [line for line in proc.stdout.splitlines() if line.startswith("(")]
    assert len(rows) == 2 * 3  # shapes x modes (train, eval, dropout)
    for row in rows:
        match = re.search(r"(\d+\.\d+)x \[(\d+\.\d+)-(\d+\.\d+)\]$", row)
        assert match, row
        median, least, greatest = map(float, match.groups())
        assert least <= median <= greatest, row


def _load():
    """The benchmark script as a module."""
    spec = importlib.util.spec_from_file_location("nn_vs_aten", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ratios_are_the_median_and_range_over_rounds():
    module = _load()
    times, baseline = [2.0, 3.0, 8.0], [1.0, 1.0, 2.0]  # per-round ratios 2, 3, 4
    assert module.ratios(times, baseline) == (3.0, 2.0, 4.0)


def test_a_bad_shape_is_refused_by_name():
    proc = _run("--shapes", "16", timeout=60, check=False)
    assert proc.returncode == 2
    assert "argument --shapes: a shape has 2 to 4 positive sizes, got '16'" in proc.stderr


def test_compiled_columns_time_the_module_torch_nn_and_the_floor():
    proc = _run(
        *("--modes", "eval", "--shapes", "4x3", "--rounds", "1", "--min-run-time", "0.01"),
        timeout=300,
    )
    header, row = [line for line in proc.stdout.splitlines() if line.startswith(("shape", "("))]
    assert "compiled/ATen" in header and "ATen compiled ms" in header and "floor ms" in header
    assert len(re.findall(r"\d+\.\d+x", row)) == 4, row  # eager, compiled, torch compiled, floor


def test_bandwidth_columns_are_the_least_bytes_moved_over_the_time_as_a_share_of_the_peak():
    module = _load()
    four = 4  # bytes of a float32
    assert module.bytes_moved((16, 4), "train", torch.float32) == 5 * 64 * four
    assert module.bytes_moved((2, 3, 4, 4), "eval", torch.float64) == 2 * 96 * 8
    assert module.bytes_moved((16, 4), "dropout", torch.float16) == 4 * 64 * 2
    proc = _run(
        *("--no-compile", "--modes", "eval", "--shapes", "64x8", "--rounds", "1"),
        *("--min-run-time", "0.01", "--peak-gbps", "20"),
    )
    assert "peak bandwidth 20 GB/s (given)" in proc.stdout
    header, row = [line for line in proc.stdout.splitlines() if line.startswith(("shape", "("))]
    assert header.split()[-4:] == ["ATen", "bw", "eager", "bw"]
    aten_ms, eager_ms = (float(v) for v in row.split()[3:5])
    aten_bw, eager_bw = (float(v.rstrip("%")) for v in row.split()[-2:])
    moved = 2 * 64 * 8 * four
    assert aten_bw == pytest.approx(moved / (aten_ms * 1e-3) / 20e9 * 100, rel=0.1, abs=0.6)
    assert eager_bw == pytest.approx(moved / (eager_ms * 1e-3) / 20e9 * 100, rel=0.1, abs=0.6)


def test_a_peak_bandwidth_that_is_not_positive_is_refused_by_name():
    proc = _run("--peak-gbps", "0", timeout=60, check=False)
    assert proc.returncode == 2
    assert "--peak-gbps must be a positive number of GB/s, got 0" in proc.stderr
