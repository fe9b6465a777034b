"""What strided ``mul_ir`` component tiles cost, and what coalesced 3D tiles win back.

One kernel scales a ``[Z, 128, 2l+1]`` segment by a per-row, per-channel factor (the memory
pattern of a channelwise product: read x1, write out) in five forms: ``strided`` (one
``[rows, lanes]`` tile per component at stride 2l+1, tritp's form before
``codegen/cg_tiles.py``), ``ld3`` / ``st3`` / ``ld3st3`` (the load, the store, or both as one
``[rows, lanes, DP]`` tile in memory order, split and joined with ``tl.split`` / ``tl.join``),
and ``ir_mul`` (the same data with contiguous component tiles). For l = 1, 2, 3 and three launch
shapes it prints milliseconds and GB/s and writes a JSON (GPU name, versions, date, command) when
given a path. Under the interpreter (no GPU) it checks each form on a few rows. It reports and
never asserts a time.

Run::

    python benchmarks/layout_micro.py benchmarks/results/layout-micro.json
"""
import datetime
import json
import os
import sys

import torch
import triton
import triton.language as tl

@triton.jit
def k_comp(x, y, w, o, Z, MUL: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, BZ: tl.constexpr, BC: tl.constexpr,
           IRMUL: tl.constexpr, LD3: tl.constexpr, ST3: tl.constexpr):
    z = tl.program_id(0) * BZ + tl.arange(0, BZ)
    zm = z < Z
    s = tl.load(y + z, mask=zm)
    for c0 in range(0, MUL, BC):
        c = c0 + tl.arange(0, BC)
        cm = c < MUL
        m2 = zm[:, None] & cm[None, :]
        wt = tl.load(w + z[:, None] * MUL + c[None, :], mask=m2) * s[:, None]
        mm = tl.arange(0, DP)
        m3 = m2[:, :, None] & (mm < D)[None, None, :]
        off3 = z[:, None, None] * (MUL * D) + c[None, :, None] * D + mm[None, None, :]
        if LD3:
            v = tl.load(x + off3, mask=m3)
            if DP == 4:
                a = tl.reshape(v, (BZ, BC, 2, 2))
                p, q = tl.split(a)
                x0, x2 = tl.split(p)
                x1, x3 = tl.split(q)
                x4 = x0; x5 = x0; x6 = x0; x7 = x0
            else:
                a = tl.reshape(v, (BZ, BC, 2, 2, 2))
                p, q = tl.split(a)
                pp, pq = tl.split(p)
                qp, qq = tl.split(q)
                x0, x4 = tl.split(pp)
                x2, x6 = tl.split(pq)
                x1, x5 = tl.split(qp)
                x3, x7 = tl.split(qq)
        else:
            if IRMUL:
                b = x + z[:, None] * (MUL * D) + c[None, :]
                st = MUL
            else:
                b = x + z[:, None] * (MUL * D) + c[None, :] * D
                st = 1
            x0 = tl.load(b, mask=m2)
            x1 = tl.load(b + st, mask=m2 & (1 < D))
            x2 = tl.load(b + 2 * st, mask=m2 & (2 < D))
            x3 = tl.load(b + 3 * st, mask=m2 & (3 < D))
            x4 = tl.load(b + 4 * st, mask=m2 & (4 < D))
            x5 = tl.load(b + 5 * st, mask=m2 & (5 < D))
            x6 = tl.load(b + 6 * st, mask=m2 & (6 < D))
            x7 = x0
        r0 = x0 * wt; r1 = x1 * wt; r2 = x2 * wt; r3 = x3 * wt
        r4 = x4 * wt; r5 = x5 * wt; r6 = x6 * wt; r7 = x7 * wt
        if ST3:
            if DP == 4:
                t = tl.join(tl.join(r0, r2), tl.join(r1, r3))
            else:
                t = tl.join(tl.join(tl.join(r0, r4), tl.join(r2, r6)), tl.join(tl.join(r1, r5), tl.join(r3, r7)))
            t = tl.reshape(t, (BZ, BC, DP))
            tl.store(o + off3, t, mask=m3)
        else:
            if IRMUL:
                b = o + z[:, None] * (MUL * D) + c[None, :]
                st = MUL
            else:
                b = o + z[:, None] * (MUL * D) + c[None, :] * D
                st = 1
            tl.store(b, r0, mask=m2)
            tl.store(b + st, r1, mask=m2 & (1 < D))
            tl.store(b + 2 * st, r2, mask=m2 & (2 < D))
            if D > 3:
                tl.store(b + 3 * st, r3, mask=m2 & (3 < D))
                tl.store(b + 4 * st, r4, mask=m2 & (4 < D))
            if D > 5:
                tl.store(b + 5 * st, r5, mask=m2 & (5 < D))
                tl.store(b + 6 * st, r6, mask=m2 & (6 < D))

VARIANTS = {"strided": (0, 0, 0), "ld3": (0, 1, 0), "st3": (0, 0, 1), "ld3st3": (0, 1, 1), "ir_mul": (1, 0, 0)}

def main():
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    Z = int(os.environ.get("MB_Z", 50000 if dev == "cuda" else 5))
    MUL = 128 if dev == "cuda" else 8
    rows = []
    for D in (3, 5, 7):
        DP = 4 if D <= 4 else 8
        x = torch.randn(Z, MUL, D, device=dev); y = torch.randn(Z, device=dev); w = torch.randn(Z, MUL, device=dev)
        ref = x * (w * y[:, None])[:, :, None]
        for bz, bc, nw in ((16, 64, 4), (32, 32, 4), (8, 128, 4)) if dev == "cuda" else ((4, 4, 1),):
            for name, (irm, l3, s3) in VARIANTS.items():
                o = torch.empty_like(x)
                xin = x.transpose(1, 2).contiguous() if irm else x
                grid = (triton.cdiv(Z, bz),)
                f = lambda: k_comp[grid](xin, y, w, o, Z, MUL, D, DP, bz, bc, irm, l3, s3, num_warps=nw)
                f()
                got = o.view(Z, D, MUL).transpose(1, 2) if irm else o
                err = (got - ref).abs().max().item()
                ms = triton.testing.do_bench(f, warmup=10, rep=50) if dev == "cuda" else float("nan")
                gbs = (x.numel() * 2 + w.numel() + Z) * 4 / ms / 1e6
                rows.append(dict(D=D, cfg=f"{bz}:{bc}:{nw}", variant=name, ms=ms, GBs=gbs, err=err))
                print(f"D={D} {bz}:{bc}:{nw} {name:8s} {ms:8.4f} ms {gbs:8.0f} GB/s err {err:.1e}", flush=True)
    if len(sys.argv) > 1:
        json.dump(dict(kind="layout-micro", device=torch.cuda.get_device_name() if dev == "cuda" else "cpu",
                       torch=torch.__version__, triton=triton.__version__, command=" ".join(["python"] + sys.argv),
                       date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), rows=rows),
                  open(sys.argv[1], "w"), indent=1)

if __name__ == "__main__":
    main()
