"""Switch an existing e3nn model to tritp: replace each ``e3nn.o3.TensorProduct`` (or subclass)
by ``tritp.from_e3nn(tp)``, keep everything else, get the same outputs and gradients.

The model below is what an e3nn user already has: an ``o3.Linear``, a
``FullyConnectedTensorProduct`` with internal weights, a channelwise ``TensorProduct`` whose
per-sample weights come from a small MLP, and an output ``o3.Linear``. :func:`swap_to_tritp`
walks the module tree and converts every tensor product in place (weights are copied;
``o3.Linear`` stays e3nn). The script then compares, on the same inputs:

* the outputs (max absolute difference);
* the gradients with respect to every input and every parameter (same parameter names in
  both models, so they are compared one by one).

It exits with status 1 if a difference exceeds the tolerance (1e-10 in float64, the default;
1e-4 relative in float32). On CPU without CUDA the tritp kernels run through the Triton
interpreter (``TRITON_INTERPRET=1``, set here before triton is imported).

Run::

    python examples/swap_e3nn.py
    python examples/swap_e3nn.py --dtype float32 --batch 64 --device cuda
"""

from __future__ import annotations

import argparse
import copy
import os
import sys

import torch  # does not import triton


def build_e3nn_model():
    """A small e3nn model, written the way an e3nn user writes it."""
    from e3nn import o3

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin_in = o3.Linear("4x0e+2x1o", "4x0e+4x1o")
            self.tp1 = o3.FullyConnectedTensorProduct("4x0e+4x1o", "0e+1o", "4x0e+3x1o+2x2e")
            mid = o3.Irreps("4x0e+3x1o+2x2e")
            # channelwise (uvu): each mid channel times the attribute, one output segment per path
            out, ins = [], []
            for i1, (mul, ir1) in enumerate(mid):
                for i2, (_, ir2) in enumerate(o3.Irreps("0e+1o+2e")):
                    for ir in ir1 * ir2:
                        if ir in o3.Irreps("0e+1o"):
                            ins.append((i1, i2, len(out), "uvu", True))
                            out.append((mul, ir))
            self.tp2 = o3.TensorProduct(mid, "0e+1o+2e", o3.Irreps(out), ins, shared_weights=False,
                                        internal_weights=False)
            self.weight_net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.SiLU(),
                                                  torch.nn.Linear(8, self.tp2.weight_numel))
            self.lin_out = o3.Linear(self.tp2.irreps_out, "2x0e+1x1o")

        def forward(self, x, attr1, attr2, scalars):
            h = self.lin_in(x)
            h = self.tp1(h, attr1)
            h = self.tp2(h, attr2, self.weight_net(scalars))
            return self.lin_out(h)

    return Block()


def swap_to_tritp(model: torch.nn.Module) -> torch.nn.Module:
    """Replace every e3nn tensor product inside ``model`` by its tritp equivalent, in place."""
    import tritp
    from e3nn import o3

    for name, child in model.named_children():
        if isinstance(child, o3.TensorProduct):
            setattr(model, name, tritp.from_e3nn(child))
        else:
            swap_to_tritp(child)
    return model


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    ap.add_argument("--dtype", default="float64", choices=("float32", "float64"), help="default float64")
    ap.add_argument("--batch", type=int, default=6, help="batch rows (default 6)")
    args = ap.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before the first import of triton
    try:
        import e3nn  # noqa: F401
    except ImportError:
        print("this example needs e3nn (pip install e3nn)")
        return 1
    dtype = getattr(torch, args.dtype)
    torch.set_default_dtype(dtype)  # e3nn builds its constants in the default dtype
    torch.manual_seed(0)

    original = build_e3nn_model().to(device)
    switched = swap_to_tritp(copy.deepcopy(original))
    def name(m):
        return f"{type(m).__module__.split('.')[0]}.{type(m).__name__}"

    print("module       e3nn model                          after swap_to_tritp")
    for (n, a), (_, b) in zip(original.named_children(), switched.named_children()):
        print(f"  {n:<10} {name(a):<35} {name(b)}{'  <- swapped' if type(a) is not type(b) else ''}")
    for n, m in switched.named_children():
        if name(m).startswith("tritp"):
            print(f"  {n}: {m}")

    g = torch.Generator(device="cpu").manual_seed(1)
    b = args.batch
    dims = (original.lin_in.irreps_in.dim, original.tp1.irreps_in2.dim, original.tp2.irreps_in2.dim, 3)
    inputs = [torch.randn(b, d, generator=g).to(device) for d in dims]  # x, attr1, attr2, scalars

    results = {}
    for label, model in (("e3nn", original), ("tritp", switched)):
        xs = [t.clone().requires_grad_() for t in inputs]
        model.zero_grad()
        y = model(*xs)
        (y * torch.linspace(-1, 1, y.shape[-1], device=device)).sum().backward()
        grads = {f"input {i}": x.grad for i, x in enumerate(xs)}
        grads.update({f"param {n}": p.grad for n, p in model.named_parameters()})
        results[label] = (y.detach(), grads)

    (y_e, g_e), (y_t, g_t) = results["e3nn"], results["tritp"]
    assert g_e.keys() == g_t.keys(), (g_e.keys() ^ g_t.keys())
    tol = 1e-10 if dtype == torch.float64 else 1e-4

    def rel(a, b):
        return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))

    ok = True
    print(f"\n{args.dtype}, batch {b}, device {device}")
    print(f"outputs: max abs diff {(y_t - y_e).abs().max().item():.3e} (max |y| {y_e.abs().max().item():.3f})")
    ok &= rel(y_t, y_e) <= tol
    print("gradients, max abs diff:")
    for k in g_e:
        d = (g_t[k] - g_e[k]).abs().max().item()
        print(f"  {k:<26} {d:.3e}")
        ok &= rel(g_t[k], g_e[k]) <= tol
    print("identical within tolerance" if ok else "MISMATCH", f"(relative tolerance {tol:.0e})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
