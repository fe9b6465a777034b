"""Gaunt tensor product: the product of two spherical functions, by every implementation.

Each of ``C`` channels holds two functions on the sphere as real spherical-harmonic
coefficients of degrees ``0..L`` (e3nn's basis and layout); the Gaunt product returns the
coefficients of their pointwise product up to degree ``L_out``. The script

1. compiles the product with each implementation tritp generates (``sparse``, ``grid``,
   ``fft``, ``separable``) and with ``implementation="auto"``;
2. checks each against tritp's float64 reference, and the reference against the definition:
   ``sum_lm out_lm Y_lm(r) = f1(r) f2(r)`` at random points ``r`` (needs ``L_out = 2L``, the
   default) with e3nn's harmonics (skipped without e3nn);
3. prints the median time of each, forward and forward+backward.

It exits with status 1 if a check fails.

Run::

    python examples/gaunt_product.py                    # L = 6, 32 channels, batch 10000 on a GPU
    python examples/gaunt_product.py --L 2 --channels 4 --batch 8   # a CPU (Triton interpreter)
"""

from __future__ import annotations

import argparse
import os
import sys

import torch  # torch does not import triton, so TRITON_INTERPRET can still be set here

if not torch.cuda.is_available():
    # No GPU: the generated Triton kernels run through the Triton interpreter (slow, real kernels)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import tritp  # noqa: E402
from quickstart import median_ms  # noqa: E402  (examples/ is on the path of a script run from it)
from tritp.gaunt_reference import gaunt_reference  # noqa: E402

IMPLEMENTATIONS = ("sparse", "grid", "fft", "separable", "auto")
RTOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def spherical(channels: int, lmax: int) -> str:
    """``channels`` functions of degrees ``0..lmax`` as irreps: ``4x0e+4x1o+4x2e`` for (4, 2).

    Example:
        >>> spherical(4, 2)
        '4x0e+4x1o+4x2e'
    """
    return "+".join(f"{channels}x{l}{'eo'[l % 2]}" for l in range(lmax + 1))


def relative_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    y, ref = y.detach().double().cpu(), ref.detach().double().cpu()
    return float((y - ref).norm() / ref.norm().clamp_min(1e-300))


def pointwise_error(gp, x1: torch.Tensor, x2: torch.Tensor, y: torch.Tensor, n: int = 16):
    """``max |sum out Y - f1 f2| / max |f1 f2|`` over ``n`` random points of the first sample,
    with e3nn's harmonics; None without e3nn."""
    try:
        from e3nn import o3
    except ImportError:
        return None
    r = torch.randn(n, 3, dtype=torch.float64)

    def values(x, irreps):  # [n, C]: each channel's function at the points
        C = irreps[0].mul
        parts = [x[s].reshape(C, ir.dim) for s, (_, ir) in zip(irreps.slices(), irreps)]
        sh = o3.spherical_harmonics([ir.l for _, ir in irreps], r, normalize=True, normalization="integral")
        return torch.cat(parts, dim=1) @ sh.T

    lhs = values(y[0].double().cpu(), gp.irreps_out)
    rhs = values(x1[0].double().cpu(), gp.irreps_in1) * values(x2[0].double().cpu(), gp.irreps_in2)
    return float((lhs - rhs).abs().max() / rhs.abs().max())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--L", type=int, default=6, help="input degrees 0..L (default 6)")
    ap.add_argument("--lmax-out", type=int, default=None, help="output degrees 0..L_out (default 2L, capped at 12)")
    ap.add_argument("--channels", type=int, default=32, help="functions per sample (default 32)")
    ap.add_argument("--batch", type=int, default=None, help="samples; default 10000 on a GPU, 8 on a CPU")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per implementation, default 5")
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batch = args.batch or (10_000 if device.type == "cuda" else 8)
    lo = min(2 * args.L, 12) if args.lmax_out is None else args.lmax_out
    dtype = getattr(torch, args.dtype)
    irreps = spherical(args.channels, args.L)
    print(f"Gaunt product of {irreps} with itself, outputs 0..{lo}, batch {batch}, {args.dtype}, on {device}"
          + (" (Triton interpreter: slow)" if device.type != "cuda" else ""))

    torch.manual_seed(0)
    x1 = torch.randn(batch, tritp.Irreps(irreps).dim, dtype=torch.float64)
    x2 = torch.randn(batch, tritp.Irreps(irreps).dim, dtype=torch.float64)
    ok = True
    for impl in IMPLEMENTATIONS:
        if impl == "sparse" and args.L > 4:  # O(L^5) unrolled literals: long compiles
            continue
        gp = tritp.compile(irreps, irreps, lmax_out=lo, mode="gaunt", implementation=impl, backend="triton")
        gp = gp.to(device=device, dtype=dtype)
        a, b = x1.to(device, dtype).requires_grad_(), x2.to(device, dtype).requires_grad_()
        y = gp(a, b)
        ref = gaunt_reference(gp.problem, x1, x2)
        err = relative_error(y, ref)
        good = err < RTOL[dtype]
        line = f"{impl:>9}" + (f" -> {gp.implementation:<9}" if impl == "auto" else " " * 13)
        line += f" rel. error {err:.1e} {'ok' if good else 'FAILED'}"
        if impl == "auto":
            pe = pointwise_error(gp, x1, x2, ref)
            if pe is not None and lo >= 2 * args.L:
                line += f"; reference vs f1*f2 at points {pe:.1e}"
                good = good and pe < 1e-10
        gy = torch.randn_like(y)
        fwd = median_ms(lambda: gp(a, b), device, args.repeats)
        fwdbwd = median_ms(lambda: torch.autograd.grad(gp(a, b), (a, b), gy), device, args.repeats)
        print(f"{line}; fwd {fwd:.3f} ms, fwd+bwd {fwdbwd:.3f} ms")
        ok = ok and good
    print("all checks passed" if ok else "a check FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
