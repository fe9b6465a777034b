"""Registers and spills of the fused graph-convolution kernels on an H100, without a GPU.

The companion of ``benchmarks/ptxas_audit.py`` (whose compile worker it uses: sm_90 cubin via
Triton's bundled ``ptxas``, no driver) for the kernels of :mod:`tritp.conv_kernels`: for each
preset, scatter strategy and direction it generates every conv kernel the convolution launches
(``edge``, ``atomic`` or ``segment`` write mode, each piece), compiles it at the chosen launch
configurations and prints registers per thread, spill stores (bytes per thread), stack frame,
compile seconds and tritp's register estimate (the sparse-CG one, which the conv default uses).
``default`` is the configuration a launch uses when nothing is tuned
(:func:`tritp.conv_kernels.default_config`). Index tensors are int64. It reports and never
asserts.

Run::

    python benchmarks/conv_ptxas.py --preset mace-large --scatter atomic,deterministic --direction fwd,bwd
    python benchmarks/conv_ptxas.py --preset mace-large --scatter deterministic --config default,16:32:8 \\
        --kernel segment --json /tmp/conv_audit.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing
sys.path.insert(0, str(HERE))

from ptxas_audit import LEGACY, Worker, add_common_options, parse_configs, run_audit, spilled  # noqa: E402

GRAPH_ARGS = ("src", "dst", "ptr", "eid", "nbr", "tok")  # index pointers of the conv kernels


def audit(args, rows: list) -> list:
    from tritp.conv_kernels import conv_kernel_source, conv_pieces, default_config, target_shape
    from tritp.conv_tuning import conv_specs
    from tritp.kernels import target_dim
    from tritp.presets import preset
    from tritp.tuning import Config
    from tritp.kernel_forms import conv_tile_form
    from tritp.tuning.registers import estimate_registers

    worker = Worker(args.triton_cache)
    ptr = "fp64" if args.dtype == "float64" else "fp32"
    E, N = args.edges, args.nodes
    print(f"{'preset':<14} {'scatter':<13} {'dir':<4} {'kernel':<44} {'pcs':>3} {'config':<10} {'est':>4} "
          f"{'regs':>4} {'spill':>5} {'stack':>5} {'bar':>4} {'wbar':>4} {'s':>6}  status", flush=True)
    try:
        for name in args.preset:
            problem, _ = preset(name)
            for scatter in args.scatter:
                for d, cs in conv_specs(problem, scatter, args.direction):
                    label = cs.tag
                    if args.kernel and not any(k in label for k in args.kernel):
                        continue
                    rows_ = target_shape(problem, cs.target, E, N, N)[0] if cs.mode == "segment" else E
                    for cfg in args.config:
                        if cfg == "default":
                            c = default_config(cs.mode, E, rows_, False, problem, cs.spec, args.dtype)
                        else:
                            c = Config(*(LEGACY if cfg == "legacy" else cfg))
                        ints = {f"s{i}": (0 if r == "w" and problem.shared_weights else target_dim(problem, r))
                                for i, r in enumerate(cs.spec.roles)}
                        ints.update(sg=target_dim(problem, cs.target), Z=rows_)
                        # the fused edge backward: one output per part (tritp.codegen.conv_fused)
                        ints.update({f"sg{i}": target_dim(problem, t)
                                     for i, t in enumerate(getattr(cs.spec, "targets", ()))})
                        parts = []
                        for piece in conv_pieces(problem, cs.spec):  # as the runtime launches it
                            path, _ = conv_kernel_source(problem, cs.spec, args.dtype, c.block_c, cs.mode, piece)
                            job = {"path": str(path), "ptr": ptr, "ints": ints, "block_z": c.block_z,
                                   "num_warps": c.num_warps, "num_stages": c.num_stages,
                                   "index_ptrs": {n: "i64" for n in GRAPH_ARGS}}
                            r = worker.run(job, args.timeout)
                            parts.append(dict(r, piece=None if piece is None else list(piece)))
                            if r["status"] != "ok":
                                break
                        ok = all(p["status"] == "ok" for p in parts)
                        agg = {"status": "ok" if ok else next(p["status"] for p in parts if p["status"] != "ok"),
                               "seconds": round(sum(p["seconds"] for p in parts), 1), "pieces": len(parts)}
                        for k in ("regs", "spill_stores", "spill_loads", "stack", "block_z"):
                            vals = [p[k] for p in parts if k in p]
                            if vals and ok:
                                agg[k] = max(vals)
                        for k in ("bar_sync", "bar_warp"):  # summed over the pieces
                            if ok and all(k in p for p in parts):
                                agg[k] = sum(p[k] for p in parts)
                        # segment mode keeps node accumulators across its edge walk
                        est = estimate_registers(problem, cs.spec, args.dtype, c, walk=cs.mode == "segment",
                                                 coalesce=conv_tile_form())
                        rows.append({"preset": name, "scatter": scatter, "direction": d, "kernel": label,
                                     "mode": cs.mode, "dtype": args.dtype, "config": c._asdict(),
                                     "requested": cfg if isinstance(cfg, str) else "explicit", "estimate": est,
                                     "edges": E, "nodes": N, **agg, "parts": parts})
                        cstr = f"{agg.get('block_z', c.block_z)}:{c.block_c}:{c.num_warps}" + (
                            f":{c.num_stages}" if c.num_stages > 1 else "")
                        status = ("SPILL" if spilled(agg) else "ok") if ok else agg["status"]
                        cell = lambda k: agg.get(k, "-") if ok else "-"  # noqa: E731
                        print(f"{name:<14} {scatter:<13} {d:<4} {label:<44} {agg['pieces']:>3} {cstr:<10} {est:>4} "
                              f"{cell('regs'):>4} {cell('spill_stores'):>5} {cell('stack'):>5} {cell('bar_sync'):>4} "
                              f"{cell('bar_warp'):>4} {agg['seconds']:>6}  {status}", flush=True)
    finally:
        worker.stop()
    return rows


def main(argv=None) -> int:
    from tritp.presets import PRESETS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="mace-large", help="comma-separated presets (default mace-large)")
    ap.add_argument("--scatter", default="atomic,deterministic", help="comma-separated: atomic, deterministic")
    ap.add_argument("--direction", default="fwd,bwd", help="comma-separated: fwd, bwd, dbl (default fwd,bwd)")
    ap.add_argument("--config", default="default",
                    help="comma-separated BLOCK_Z:BLOCK_C:NUM_WARPS[:NUM_STAGES] , 'default' or 'legacy' (16:64:4)")
    ap.add_argument("--kernel", default="", help="comma-separated substrings of kernel tags to keep "
                                                 "('[segment]', 'out_', 'x2_', ...)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--edges", type=int, default=158_000, help="edges (default: the diamond graph's 158,000)")
    ap.add_argument("--nodes", type=int, default=1000, help="nodes (default 1000)")
    add_common_options(ap, 180.0)
    args = ap.parse_args(argv)
    args.preset = [x for x in args.preset.split(",") if x]
    bad = [p for p in args.preset if p not in PRESETS]
    if bad:
        raise SystemExit(f"conv_ptxas: unknown preset {bad[0]!r}; known: {', '.join(PRESETS)}")
    args.scatter = [x for x in args.scatter.split(",") if x]
    if any(s not in ("atomic", "deterministic") for s in args.scatter):
        raise SystemExit("conv_ptxas: --scatter takes atomic, deterministic")
    args.direction = tuple(x for x in args.direction.split(",") if x)
    if any(d not in ("fwd", "bwd", "dbl") for d in args.direction):
        raise SystemExit("conv_ptxas: --direction takes fwd, bwd, dbl")
    args.config = parse_configs(args.config)
    args.kernel = [x.strip() for x in args.kernel.split(",") if x.strip()]
    return run_audit(audit, args)


if __name__ == "__main__":
    sys.exit(main())
