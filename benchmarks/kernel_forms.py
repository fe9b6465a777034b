"""Time tritp's kernel forms against each other: layout, tile form, channel loops; one run.

Three questions the CPU cannot answer, asked of one GPU at once:

* **Layout.** In e3nn's ``mul_ir`` layout a segment's components interleave: the tile of one
  component m is read and written at stride ``2l+1`` along the channels, so each warp access
  touches ``2l+1`` times the sectors it uses (stores reach L2 as partial sectors). In
  cuEquivariance's ``ir_mul`` layout every tile is contiguous. The kernels are otherwise the
  same, so the ratio ``ir_mul / mul_ir`` is what the interleaving costs.
* **Coalesced mul_ir tiles** (``tritp.codegen.cg_tiles``): the default reads and writes each
  ``mul_ir`` segment as one tile in memory order and splits it into components (through
  shared memory), loaded in the row-on-warp form (``mul_ir/rows``: rows on the compute
  layout's warps, so the conversions stay within warps); ``TRITP_COALESCE=3d`` the 3D
  pointer tiles without that form (``mul_ir/3d``); ``TRITP_COALESCE=0`` the strided component
  tiles of before.
* **Shared channel loops** (README, "How the kernels work"): output segments that read one
  operand tile share a loop and load it once (fewer loads and instructions, more registers);
  ``TRITP_SHARE_LOADS=0`` generates the former one-loop-per-segment kernels.
* **Fused backward** (``tritp.codegen.cg_fused``): a channelwise backward computes the
  gradients of x1, the weights and x2 in one kernel that reads the cotangent once;
  ``TRITP_FUSED_BWD=0`` (``mul_ir/unfused``) runs one kernel per gradient, as before. Timed
  for ``fwdbwd`` and ``dbl`` only (the forward is the same kernel).
* **Only the wanted gradients** (``tritp.op_pair.engine_needs``): the ``dbl`` direction's first
  pass asks for x2's gradient alone, and a backward now computes only that one;
  ``TRITP_PRUNE_GRADS=0`` (``mul_ir/allgrads``) computes the gradients of every input that
  requires grad, as before. Timed for ``dbl`` only.
* **Fused double backward** (``tritp.codegen.fused_specs``): the backward of x2's gradient
  kernel -- the ``dbl`` direction's second pass -- is one fused kernel for x1's and the weights'
  gradients; ``TRITP_FUSED_DBL=0`` (``mul_ir/dbl-apart``) runs one kernel each, as before.
* **Eager calls without op dispatch** (``tritp.eager_ops``): the same kernels launched through
  plain ``autograd.Function`` s; ``TRITP_FAST_EAGER=0`` (``mul_ir/ops``) goes through the
  ``torch.library`` ops, as before. The difference is CPU time per call, which shows where a
  kernel runs shorter than its launch path (the small presets).

For each preset and direction (``fwd``, ``fwdbwd``; ``dbl`` on request) it builds the
forms (``mul_ir/rows``, the default; ``mul_ir/3d``; ``mul_ir/strided``; ``mul_ir/unshared``;
``mul_ir/unfused``; ``mul_ir/allgrads``; ``mul_ir/dbl-apart``; ``mul_ir/ops``; ``ir_mul``; ``--forms`` picks some),
compiles their kernels in parallel, checks each against the float64 reference on the
first rows (inputs converted to the variant's layout, outputs back), then times them
(``triton.testing.do_bench`` median on CUDA, wall clock elsewhere) and prints milliseconds,
the ratio to the default form and the percent of the I/O floor from the
copy bandwidth measured in the same run. ``--out DIR`` writes the JSON (the GPU name, versions,
date and command included). It reports; it never asserts a time.

Run::

    python benchmarks/kernel_forms.py --preset mace-large,mace-medium,nequip-benzene --time-limit 150
    python benchmarks/kernel_forms.py --quick          # CPU: the tiny preset through the interpreter
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

if not torch.cuda.is_available():  # triton reads this when imported, so before tritp is
    os.environ.setdefault("TRITON_INTERPRET", "1")

from tritp import bench, cli_bench  # noqa: E402
from tritp.cli import interruptible  # noqa: E402
from tritp.kernels import form_env  # noqa: E402
from tritp.module import TensorProduct  # noqa: E402
from tritp.presets import preset  # noqa: E402
from tritp.reference import reference_tp, to_ir_mul, to_mul_ir  # noqa: E402

# (name, layout, the TRITP_ settings that select the form); the first is the default
FORMS = (("mul_ir/rows", "mul_ir", {}), ("mul_ir/3d", "mul_ir", {"TRITP_COALESCE": "3d"}),
         ("mul_ir/strided", "mul_ir", {"TRITP_COALESCE": "0"}),
         ("mul_ir/unshared", "mul_ir", {"TRITP_SHARE_LOADS": "0"}),
         ("mul_ir/unfused", "mul_ir", {"TRITP_FUSED_BWD": "0"}),
         ("mul_ir/allgrads", "mul_ir", {"TRITP_PRUNE_GRADS": "0"}),
         ("mul_ir/dbl-apart", "mul_ir", {"TRITP_FUSED_DBL": "0"}),
         ("mul_ir/ops", "mul_ir", {"TRITP_FAST_EAGER": "0"}), ("ir_mul", "ir_mul", {}))
#: Forms that differ from the default only in some directions: the others are not timed twice
ONLY = {"mul_ir/unfused": ("fwdbwd", "dbl"), "mul_ir/allgrads": ("dbl",), "mul_ir/dbl-apart": ("dbl",)}
KINDS = {"fwd": ("fwd",), "fwdbwd": ("fwd", "bwd"), "dbl": ("fwd", "bwd", "dbl")}


def in_layout(t: tuple, p, layout: str) -> tuple:
    """``(x1, x2, w, g, h)`` of :func:`tritp.bench.make_inputs` in ``layout`` (weights as they are)."""
    if layout == "mul_ir":
        return t
    x1, x2, w, g, h = t
    conv = lambda x, irreps: None if x is None else to_ir_mul(x, irreps).contiguous()
    return (conv(x1, p.irreps_in1), conv(x2, p.irreps_in2), w, conv(g, p.irreps_out), conv(h, p.irreps_in2))


def back_to_mul_ir(results: list, p, layout: str, direction: str) -> list:
    """A direction's results (see :func:`tritp.bench.direction_fn`) in ``mul_ir``."""
    if layout == "mul_ir":
        return results
    roles = {"fwd": [p.irreps_out], "fwdbwd": [p.irreps_in1, p.irreps_in2, None], "dbl": [p.irreps_in1, None]}
    return [r if ir is None or r is None else to_mul_ir(r, ir) for r, ir in zip(results, roles[direction])]


def run_problem(name: str, problem, batch: int, args, timer, log) -> dict:
    rec = {"name": name, "problem": problem.key, "batch": batch, "times_ms": {}, "errors": {}, "failures": {},
           "io_bytes": {d: bench.io_bytes(problem, batch, 4 if args.dtype == torch.float32 else 8, d)
                        for d in args.directions}}
    full = bench.make_inputs(problem, batch, args.dtype, args.device)
    nchk = min(args.check_rows, batch)
    chk64 = bench.rows(full, nchk, problem.shared_weights, torch.float64)
    refs = {d: bench.direction_fn(lambda a, b, c: reference_tp(problem, a, b, c), d, chk64)() for d in args.directions}
    for form, layout, env in FORMS:
        if form not in args.forms:
            continue
        with form_env(env):
            p = problem.replace(layout=layout)
            tp = TensorProduct(p, backend="triton")
            fn = lambda a, b, c: tp(a, b, c)  # noqa: E731
            data = in_layout(full, p, layout)
            chk = bench.rows(data, nchk, p.shared_weights)
            try:
                if args.device.type == "cuda":
                    kinds = sorted({k for d in args.directions for k in KINDS[d]})
                    tp.precompile(batch=batch, directions=kinds, dtype=args.dtype, device=args.device)
                for d in args.directions:
                    if d not in ONLY.get(form, (d,)):
                        continue
                    if args.out_of_time():
                        rec["failures"][f"{form}:{d}"] = "skipped: time limit"
                        continue
                    got = back_to_mul_ir(bench.direction_fn(fn, d, chk)(), p, layout, d)
                    rec["errors"].setdefault(form, {})[d] = err = bench.rel_error(got, refs[d])
                    ms = timer(bench.direction_fn(fn, d, data))
                    rec["times_ms"].setdefault(form, {})[d] = ms
                    log(f"  {name} {d:6s} {form:16s} {ms:10.4f} ms   rel. error {err:.1e}")
            except Exception as e:  # a form that fails is a result, not a crash
                rec["failures"][form] = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
                log(f"  {name} {form} failed: {rec['failures'][form]}")
            finally:
                del data, chk
    return rec


def render(result: dict) -> None:
    from rich.table import Table

    forms = [f[0] for f in FORMS if f[0] in result["forms"]]
    t = Table(title=f"{result['device_name']} | copy {result['bandwidth_Bps'] / 1e9:.0f} GB/s | ms, "
                    f"and ratio to {forms[0]}" + (" | INTERRUPTED" if result.get("interrupted") else ""))
    for col in ["problem", "dir"] + forms + ["% floor " + forms[0]]:
        t.add_column(col, justify="left" if col in ("problem", "dir") else "right")
    for rec in result["problems"]:
        for d in rec["io_bytes"]:
            base = rec["times_ms"].get(forms[0], {}).get(d)
            cells = []
            for f in forms:
                ms = rec["times_ms"].get(f, {}).get(d)
                cells.append("-" if ms is None else f"{ms:.4g}" + ("" if f == forms[0] or not base else f" ({ms / base:.2f})"))
            floor = rec["io_bytes"][d] / result["bandwidth_Bps"] * 1e3
            t.add_row(rec["name"], d, *cells, "-" if not base else f"{100 * floor / base:.0f}%")
    cli_bench.make_console().print(t)


def main(argv=None) -> int:
    interruptible()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="mace-large,mace-medium,nequip-benzene,uvu-128x3e")
    ap.add_argument("--directions", default="fwd,fwdbwd", help="comma-separated: fwd, fwdbwd, dbl")
    ap.add_argument("--batch", type=int, help="rows (default: each preset's; dbl runs at that batch too)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--forms", help="comma-separated names of FORMS to time (default all; the first is the "
                                    "ratios' base when it is among them)")
    ap.add_argument("--check-rows", type=int, default=256)
    ap.add_argument("--time-limit", type=float, metavar="S", help="skip what is left after S seconds")
    ap.add_argument("--out", metavar="DIR", help="write the JSON here")
    ap.add_argument("--quick", action="store_true", help="CPU smoke run: the tiny preset, 16 rows, two reps")
    args = ap.parse_args(argv)
    args.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.dtype = getattr(torch, args.dtype)
    args.directions = [d for d in args.directions.split(",") if d]
    if any(d not in KINDS for d in args.directions):
        raise SystemExit(f"kernel_forms: --directions takes {', '.join(KINDS)}")
    known = [f[0] for f in FORMS]
    args.forms = known if not args.forms else [f for f in args.forms.split(",") if f]
    if not args.forms or any(f not in known for f in args.forms):
        raise SystemExit(f"kernel_forms: --forms takes {', '.join(known)}")
    names = ["tiny"] if args.quick else [n for n in args.preset.split(",") if n]
    started = time.monotonic()
    args.out_of_time = lambda: args.time_limit is not None and time.monotonic() - started > args.time_limit
    timer = bench.default_timer(args.device, quick=args.quick)
    result = {"schema": 1, "kind": "kernel-forms",
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(["python"] + sys.argv), "device_name": torch.cuda.get_device_name()
              if args.device.type == "cuda" else "cpu", "interpreter": bench.interpreter_active(),
              "dtype": str(args.dtype).replace("torch.", ""), "forms": args.forms,
              "bandwidth_Bps": bench.copy_bandwidth(args.device, timer), "problems": []}
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    try:
        for name in names:
            problem, batch = preset(name)
            batch = 16 if args.quick else (args.batch or batch)
            log(f"{name}: {problem!r}, batch {batch}")
            result["problems"].append(run_problem(name, problem, batch, args, timer, log))
    except KeyboardInterrupt:  # keep what was measured (gpu_check.sh stops a stage with SIGINT)
        result["interrupted"] = True
    result["versions"] = cli_bench.versions()
    render(result)
    if args.out:
        print(f"wrote {cli_bench.write_json(result, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
