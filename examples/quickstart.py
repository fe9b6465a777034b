"""Quickstart: one tensor product from a real model, checked and timed.

The problem is MACE-medium's interaction tensor product (design notes, section 7): node
features ``128x0e+128x1o`` times edge spherical harmonics ``0e+1o+2e+3o``, channelwise
(``uvu``), outputs filtered to ``0e+1o+2e``, one weight vector per edge. The script

1. prints the coupling summary (the same table as ``tritp show ... --mode channelwise``);
2. compiles it and runs it on a batch in float32 (CUDA if available, else CPU);
3. checks it against tritp's float64 reference and against ``e3nn.o3.TensorProduct`` built
   with the same instructions (skipped when e3nn is not installed);
4. prints the median time of tritp and of e3nn.

It exits with status 1 if a check fails.

Run::

    python examples/quickstart.py               # batch 50000 on a GPU, 256 on a CPU
    python examples/quickstart.py --batch 50000 --repeats 20

The tensor product under test is ``tritp.compile(..., mode="channelwise")``: generated Triton
kernels on CUDA, and on a CPU the same kernels through the Triton interpreter (set here when
there is no GPU; slow), or tritp's PyTorch reference with ``--backend reference``. :func:`build_tensor_product` is the one place to change.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch  # torch does not import triton, so TRITON_INTERPRET can still be set here

if not torch.cuda.is_available():
    # No GPU: run tritp's generated Triton kernels through the Triton interpreter on the CPU
    # (slow, but it is the real kernels that get checked); --backend reference skips them.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import tritp  # noqa: E402
from tritp.cli_show import show_problem

# Where fp32 must agree with fp64 and with e3nn, relative to the norm of the output; float32
# rounding is ~1e-7 per operation and each output sums a handful of products.
RTOL = 1e-5


def mace_medium() -> tritp.Problem:
    """MACE-medium's channelwise tensor product (design notes, section 7).

    Example:
        >>> mace_medium().weight_numel
        1024
    """
    return tritp.Problem.channelwise("128x0e+128x1o", "0e+1o+2e+3o", "0e+1o+2e")


def build_tensor_product(device: torch.device, backend: str = "auto"):
    """What a user writes: the compiled tensor product, ``tp(x1, x2, weight) -> out``, and a
    label saying what runs it.

    ``backend="auto"`` runs the generated Triton kernels on CUDA (and on CPU under
    ``TRITON_INTERPRET=1``); elsewhere it picks the PyTorch reference, explicitly, so tritp
    has nothing to warn about.

    Example:
        >>> tp, label = build_tensor_product(torch.device("cpu"), "reference")
        >>> tp(torch.randn(2, 512), torch.randn(2, 16), torch.randn(2, 1024)).shape, label
        (torch.Size([2, 3328]), 'tritp (reference)')
    """
    if backend == "auto":
        triton_runs = device.type == "cuda" or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
        backend = "triton" if triton_runs else "reference"
    # ------------------------------------------------------------------------------------
    # THE SPOT: the tensor product under test. Swap in another implementation here (say a
    # different backend) and everything below checks and times it unchanged.
    # ------------------------------------------------------------------------------------
    tp = tritp.compile("128x0e+128x1o", "0e+1o+2e+3o", "0e+1o+2e", mode="channelwise", backend=backend)
    where = " interpreter" if backend == "triton" and device.type != "cuda" else ""  # CPU: emulated, slow
    return tp.to(device), f"tritp ({backend}{where})"


def relative_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    """``||y - ref|| / ||ref||`` computed in float64."""
    y, ref = y.double(), ref.double()
    return float((y - ref).norm() / ref.norm().clamp_min(1e-300))


def median_ms(fn, device: torch.device, repeats: int) -> float:
    """Median wall time of ``fn()`` in milliseconds, after one warm-up call.

    On CUDA the device is synchronized around each call, so the time covers the kernels and
    not just their launch.
    """
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def e3nn_tensor_product(problem: tritp.Problem, device: torch.device):
    """``e3nn.o3.TensorProduct`` with the problem's exact instructions, or None without e3nn."""
    try:
        from e3nn import o3
    except ImportError:
        return None
    tp = o3.TensorProduct(
        str(problem.irreps_in1), str(problem.irreps_in2), str(problem.irreps_out),
        [ins.as_tuple() for ins in problem.instructions],
        irrep_normalization=problem.irrep_normalization, path_normalization=problem.path_normalization,
        shared_weights=problem.shared_weights, internal_weights=False,
    )
    return tp.to(device)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=None,
                    help="batch rows (edges); default 50000 on a GPU (design section 7), 256 on a CPU")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per implementation, default 5")
    ap.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    ap.add_argument("--backend", default="auto", choices=("auto", "triton", "reference"),
                    help="tritp backend (default auto: Triton where it can run, else the reference)")
    args = ap.parse_args(argv)
    if args.batch is None:
        args.batch = 50_000 if torch.cuda.is_available() else 256
    if args.batch < 1 or args.repeats < 1:
        ap.error("--batch and --repeats must be positive")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    problem = mace_medium()
    show_problem(problem)

    torch.manual_seed(0)
    z = args.batch
    x1 = torch.randn(z, problem.irreps_in1.dim, device=device)
    x2 = torch.randn(z, problem.irreps_in2.dim, device=device)
    w = torch.randn(z, problem.weight_numel, device=device)  # per-sample: one vector per edge
    print(f"\nbatch {z}, float32, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))

    ok = True
    tp, label = build_tensor_product(device, args.backend)
    if tp.problem != problem:  # compile(mode="channelwise") must build exactly MACE's problem
        print("compiled problem differs from mace_medium(): FAILED", file=sys.stderr)
        return 1
    with torch.no_grad():
        # the first call generates the kernel source (or finds it in the cache) and compiles it
        # (or finds it in Triton's cache): what a new problem costs once per machine
        t0 = time.perf_counter()
        y = tp(x1, x2, w)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        print(f"first call (source + compile + run, caches as found): {time.perf_counter() - t0:.2f} s")
        ref64 = tritp.reference_tp(problem, x1.double(), x2.double(), w.double())
    err = relative_error(y, ref64)
    passed = err <= RTOL
    ok &= passed
    print(f"check vs float64 reference: relative error {err:.2e} (tolerance {RTOL:.0e}) "
          f"{'ok' if passed else 'FAILED'}")

    e3 = e3nn_tensor_product(problem, device)
    if e3 is None:
        print("check vs e3nn: e3nn not installed: skipped")
    else:
        with torch.no_grad():
            y_e3 = e3(x1, x2, w)
        err = relative_error(y, y_e3)
        passed = err <= RTOL
        ok &= passed
        print(f"check vs e3nn.o3.TensorProduct: relative error {err:.2e} (tolerance {RTOL:.0e}) "
              f"{'ok' if passed else 'FAILED'}")

    # Forward only, no autograd graph: what inference costs.
    with torch.no_grad():
        t_ours = median_ms(lambda: tp(x1, x2, w), device, args.repeats)
        print(f"\nforward, median of {args.repeats}:")
        print(f"  {label:<28} {t_ours:9.3f} ms")
        if e3 is not None:
            t_e3 = median_ms(lambda: e3(x1, x2, w), device, args.repeats)
            print(f"  {'e3nn':<28} {t_e3:9.3f} ms   (speedup over e3nn: {t_e3 / t_ours:.2f}x)")

    print("\nall checks passed" if ok else "\nSOME CHECKS FAILED", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
