"""``benchmarks/nn_vs_aten.py`` runs and prints its table (a smoke test: it times nothing here)."""

from __future__ import annotations

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
        assert re.search(r"\d+\.\d+x$", row), row


def test_a_bad_shape_is_refused_by_name():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--shapes", "16"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "argument --shapes: a shape has 2 to 4 positive sizes, got '16'" in proc.stderr
