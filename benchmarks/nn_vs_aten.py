"""The reference layers of ``bncourse.nn`` against ATen (``torch.nn``), side by side in one process.

For each shape and mode it times, with ``torch.utils.benchmark``, the ``torch.nn`` module (ATen's
kernels), the ``bncourse.nn`` module as it runs eagerly, and the same module under
``torch.compile``, and prints the times and their ratios to ATen's. Beside them, the ``torch.nn``
module under ``torch.compile`` ("ATen compiled") shows what the compiler makes of PyTorch's own
layer, and "floor" the compiled training step of the least a layer can do, a per-channel scale
``x * w``: what a compiled call costs at that size whatever it computes. Both are the yardsticks
for the reference module's compiled time:

* ``train``: one training step of batch norm, forward and backward (``y.backward(g)``), batch
  statistics and running-statistics update included;
* ``eval``: the evaluation-mode forward pass (running statistics);
* ``dropout``: one training step of inverted dropout, forward and backward.

On a CUDA device (or on a CPU given ``--peak-gbps``) it also prints the achieved memory bandwidth
of ATen's and of the eager module's step, counted as the bytes a fused kernel must move at the
least (read ``x`` and write ``y`` in the forward pass; read ``x`` and ``dy`` and write ``dx`` in
the backward pass; read ``x``, write ``y`` in eval; for dropout, read ``x`` and write ``y``, read
``dy`` and write ``dx``), divided by the time, as a fraction of the peak bandwidth.

    python benchmarks/nn_vs_aten.py                   # CPU, one thread, float32, every shape
    python benchmarks/nn_vs_aten.py --no-compile      # without torch.compile (much faster)
    python benchmarks/nn_vs_aten.py --device cuda     # a GPU, with bandwidth
    python benchmarks/nn_vs_aten.py --peak-gbps 20    # a CPU whose memory moves 20 GB/s at most

The machine may be shared: each measurement alternates ATen and the reference module for
``--rounds`` rounds and prints the median time of each and the median of the per-round ratios,
which are what to compare between runs, with the range of those ratios over the rounds in
brackets: a wide range means a noisy machine, and a median worth measuring again. On a CPU the
times are the CPU time of the timing thread (``--clock cpu``, the default there), which leaves
out the time other processes hold the core; ``--clock wall`` times the wall clock instead.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import timeit
from collections.abc import Callable

import torch
from torch import nn
from torch.utils import benchmark

from bncourse import nn as bnn

SHAPES = [(256, 512), (4096, 1024), (32, 64, 56, 56), (8, 256, 28, 28)]
MODES = ("train", "eval", "dropout")
P = 0.3


def _shape(text: str) -> tuple[int, ...]:
    """'256x512' -> (256, 512); batch norm needs 2 to 4 axes here."""
    try:
        shape = tuple(int(n) for n in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a shape is N x C [x ...], e.g. 256x512, got {text!r}"
        ) from None
    if not 2 <= len(shape) <= 4 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"a shape has 2 to 4 positive sizes, got {text!r}")
    return shape


class PerChannelScale(nn.Module):
    """``x * w`` with one learned ``w`` per channel: the least work a normalization layer does."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.reshape(1, -1, *([1] * (x.dim() - 2)))


def _modules(shape: tuple[int, ...], mode: str, device: torch.device, dtype: torch.dtype):
    """(torch.nn module, bncourse.nn module) for a shape and mode, with equal state."""
    if mode == "dropout":
        return nn.Dropout(P), bnn.Dropout(P)
    theirs = (nn.BatchNorm1d if len(shape) < 4 else nn.BatchNorm2d)(shape[1], momentum=0.3)
    ours = (bnn.BatchNorm1d if len(shape) < 4 else bnn.BatchNorm2d)(shape[1], momentum=0.3)
    for m in (theirs, ours):
        m.to(device=device, dtype=dtype)
        m.train(mode != "eval")
    return theirs, ours


def _step(module: nn.Module, x: torch.Tensor, grad: torch.Tensor, mode: str) -> Callable[[], None]:
    """The timed statement: a forward pass, and the backward pass unless in eval mode."""
    if mode == "eval":

        def run() -> None:
            with torch.no_grad():
                module(x)

    else:

        def run() -> None:
            module(x).backward(grad)
            x.grad = None

    return run


CLOCKS = {"wall": timeit.default_timer, "cpu": time.thread_time}


def _time(run: Callable[[], None], device: torch.device, min_run_time: float, clock: str) -> float:
    """Median seconds per call, after a warm-up (for torch.compile, the compilation)."""
    for _ in range(3):  # warm-up; for torch.compile, the compilation
        run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    timer = benchmark.Timer(
        stmt="run()",
        globals={"run": run},
        timer=CLOCKS[clock],
        num_threads=torch.get_num_threads(),
    )
    return timer.blocked_autorange(min_run_time=min_run_time).median


def ratios(times: list[float], baseline: list[float]) -> tuple[float, float, float]:
    """Median, least and greatest over rounds of the ratio of two times measured side by side."""
    per_round = [t / b for t, b in zip(times, baseline, strict=True)]
    return statistics.median(per_round), min(per_round), max(per_round)


def _ratio_text(times: list[float], baseline: list[float]) -> str:
    """'1.23x [1.10-1.40]': the median ratio over rounds, and its range."""
    median, least, greatest = ratios(times, baseline)
    return f"{median:.2f}x [{least:.2f}-{greatest:.2f}]"


def peak_bandwidth(device: torch.device) -> float | None:
    """Peak memory bandwidth of a CUDA device in bytes/s (double data rate), where torch knows it."""
    props = torch.cuda.get_device_properties(device)
    clock_khz = getattr(props, "memory_clock_rate", None)
    bus_bits = getattr(props, "memory_bus_width", None)
    if not clock_khz or not bus_bits:
        return None
    return 2 * clock_khz * 1e3 * bus_bits / 8


def bytes_moved(shape: tuple[int, ...], mode: str, dtype: torch.dtype) -> int:
    """Least bytes a fused implementation moves per step (see the module docstring)."""
    n = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
    return {"train": 5 * n, "eval": 2 * n, "dropout": 4 * n}[mode]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op CPU threads (default 1)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument(
        "--shapes",
        nargs="+",
        type=_shape,
        default=SHAPES,
        help="input shapes such as 256x512 8x256x28x28 (default: two MLP and two CNN shapes)",
    )
    parser.add_argument("--min-run-time", type=float, default=0.2, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        help="cpu: CPU time of the one timing thread (default with --threads 1 on a CPU); "
        "wall: wall clock (default otherwise)",
    )
    parser.add_argument(
        "--peak-gbps",
        type=float,
        help="peak memory bandwidth in GB/s, for the bandwidth columns (default: on a CUDA device, "
        "what torch reports; on a CPU, none: give your machine's to see them)",
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    one_cpu_thread = device.type == "cpu" and args.threads == 1
    clock = args.clock or ("cpu" if one_cpu_thread else "wall")
    if clock == "cpu" and not one_cpu_thread:
        parser.error("--clock cpu times one thread on a CPU: use --clock wall")
    torch.set_num_threads(args.threads)
    dtype = torch.float32
    if args.peak_gbps is not None and args.peak_gbps <= 0:
        parser.error(f"--peak-gbps must be a positive number of GB/s, got {args.peak_gbps:g}")
    peak = args.peak_gbps * 1e9 if args.peak_gbps else None
    if device.type == "cuda":
        peak = peak or peak_bandwidth(device)
        print(
            f"device: {torch.cuda.get_device_name(device)}, peak bandwidth {peak / 1e9:.0f} GB/s"
            if peak
            else "peak bandwidth unknown (use --peak-gbps)"
        )
    else:
        print(f"device: cpu, {args.threads} thread(s), torch {torch.__version__}, {clock} clock")
        if peak:
            print(f"peak bandwidth {peak / 1e9:.0f} GB/s (given)")
    header = f"{'shape':<18} {'mode':<8} {'ATen ms':>9} {'eager ms':>9} {'eager/ATen [range]':>20}"
    if not args.no_compile:
        header += f" {'compiled ms':>11} {'compiled/ATen [range]':>21}"
        header += f" {'ATen compiled ms':>16} {'/ATen':>6} {'floor ms':>9} {'/ATen':>6}"
    if peak:
        header += f" {'ATen bw':>8} {'eager bw':>8}"
    print(header)
    for shape in args.shapes:
        for mode in args.modes:
            torch.manual_seed(0)
            x = torch.randn(shape, device=device, dtype=dtype, requires_grad=mode != "eval")
            grad = torch.randn(shape, device=device, dtype=dtype)
            theirs, ours = _modules(shape, mode, device, dtype)
            runs = {"ATen": _step(theirs, x, grad, mode), "eager": _step(ours, x, grad, mode)}
            if not args.no_compile:
                torch._dynamo.reset()
                runs["compiled"] = _step(torch.compile(ours), x, grad, mode)
                runs["ATen compiled"] = _step(torch.compile(theirs), x, grad, mode)
                floor = PerChannelScale(shape[1]).to(device=device, dtype=dtype)
                runs["floor"] = _step(torch.compile(floor), x, grad, mode)
            times = {name: [] for name in runs}
            for _ in range(args.rounds):
                for name, run in runs.items():
                    times[name].append(_time(run, device, args.min_run_time, clock))
            aten = statistics.median(times["ATen"])
            eager = statistics.median(times["eager"])
            line = (
                f"{str(shape):<18} {mode:<8} {aten * 1e3:>9.3f} {eager * 1e3:>9.3f} "
                f"{_ratio_text(times['eager'], times['ATen']):>20}"
            )
            if not args.no_compile:
                compiled = statistics.median(times["compiled"])
                line += (
                    f" {compiled * 1e3:>11.3f} {_ratio_text(times['compiled'], times['ATen']):>21}"
                )
                for name, width in (("ATen compiled", 16), ("floor", 9)):
                    line += (
                        f" {statistics.median(times[name]) * 1e3:>{width}.3f}"
                        f" {ratios(times[name], times['ATen'])[0]:>5.2f}x"
                    )
            if peak:
                moved = bytes_moved(shape, mode, dtype)
                line += f" {moved / aten / peak:>7.0%} {moved / eager / peak:>8.0%}"
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
