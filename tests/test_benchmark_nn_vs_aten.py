"""``benchmarks/nn_vs_aten.py`` runs and prints its table (a smoke test: it times nothing here)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "nn_vs_aten.py"


def test_prints_one_row_per_shape_and_mode_with_ratios():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--no-compile", "--shapes", "16x4", "2x3x4x4"]
        + ["--rounds", "1", "--min-run-time", "0.01"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    rows = [line for line in proc.stdout.splitlines() if line.startswith("(")]
    assert len(rows) == 2 * 3  # shapes x modes (train, eval, dropout)
    for row in rows:
        match = re.search(r"(\d+\.\d+)x \[(\d+\.\d+)-(\d+\.\d+)\]$", row)
        assert match, row
        median, least, greatest = map(float, match.groups())
        assert least <= median <= greatest, row


def test_ratios_are_the_median_and_range_over_rounds():
    spec = importlib.util.spec_from_file_location("nn_vs_aten", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    times, baseline = [2.0, 3.0, 8.0], [1.0, 1.0, 2.0]  # per-round ratios 2, 3, 4
    assert module.ratios(times, baseline) == (3.0, 2.0, 4.0)


def test_a_bad_shape_is_refused_by_name():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--shapes", "16"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "argument --shapes: a shape has 2 to 4 positive sizes, got '16'" in proc.stderr


def test_compiled_columns_time_the_module_torch_nn_and_the_floor():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--modes", "eval", "--shapes", "4x3"]
        + ["--rounds", "1", "--min-run-time", "0.01"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    header, row = [line for line in proc.stdout.splitlines() if line.startswith(("shape", "("))]
    assert "compiled/ATen" in header and "ATen compiled ms" in header and "floor ms" in header
    assert len(re.findall(r"\d+\.\d+x", row)) == 4, row  # eager, compiled, torch compiled, floor
