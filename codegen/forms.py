"""Constructors for the tensor products that models actually build.

Each mirrors the e3nn (or MACE/NequIP) code that builds the same thing, so the irreps and
instruction order -- and hence the flat weight layout -- agree exactly. They are attached to
:class:`~tritp.codegen.problem.Problem` as classmethods.

Example:
    >>> from tritp.codegen import Problem
    >>> p = Problem.channelwise("128x0e+128x1o", "0e+1o+2e+3o", "0e+1o+2e")
    >>> str(p.irreps_out), len(p.instructions), p.shared_weights
    ('128x0e+128x0e+128x1o+128x1o+128x1o+128x2e+128x2e+128x2e', 8, False)
"""

from __future__ import annotations

from .irreps import Irrep, Irreps, as_irreps


def _filter(filter_ir_out):
    if filter_ir_out is None:
        return None
    if isinstance(filter_ir_out, str):
        return [mi.ir for mi in Irreps(filter_ir_out)]
    return [Irrep(ir) for ir in filter_ir_out] if not hasattr(filter_ir_out, "dim") else [
        mi.ir for mi in Irreps(filter_ir_out)]


def channelwise(cls, irreps_in1, irreps_in2, target_irreps, *, shared_weights=False, **kw):
    """``uvu`` with one output segment per path, filtered to the irreps of ``target_irreps``,
    output sorted -- what MACE's ``tp_out_irreps_with_instructions`` and NequIP build.
    Weights are per-sample (``shared_weights=False``) by default, as in those models."""
    in1 = as_irreps(irreps_in1, "irreps_in1")
    in2 = as_irreps(irreps_in2, "irreps_in2")
    target = _filter(target_irreps)
    out, ins = [], []
    for i, (mul, ir1) in enumerate(in1):
        for j, (_, ir2) in enumerate(in2):
            for ir in ir1 * ir2:
                if ir in target:
                    ins.append((i, j, len(out), "uvu", True))
                    out.append((mul, ir))
    out, perm, _ = Irreps(out).sort()
    ins = sorted(((a, b, perm[k], m, w) for a, b, k, m, w in ins), key=lambda x: x[2])
    return cls(in1, in2, out, ins, shared_weights=shared_weights, **kw)


def fully_connected(cls, irreps_in1, irreps_in2, irreps_out, *, shared_weights=True, **kw):
    """Every allowed ``uvw`` path with weights: e3nn's ``FullyConnectedTensorProduct``."""
    in1 = as_irreps(irreps_in1, "irreps_in1")
    in2 = as_irreps(irreps_in2, "irreps_in2")
    out = as_irreps(irreps_out, "irreps_out")
    ins = [
        (i1, i2, io, "uvw", True, 1.0)
        for i1, (_, r1) in enumerate(in1)
        for i2, (_, r2) in enumerate(in2)
        for io, (_, ro) in enumerate(out)
        if ro in r1 * r2
    ]
    return cls(in1, in2, out, ins, shared_weights=shared_weights, **kw)


def elementwise(cls, irreps_in1, irreps_in2, filter_ir_out=None, **kw):
    """Channel ``u`` of input 1 with channel ``u`` of input 2, ``uuu`` without weights:
    e3nn's ``ElementwiseTensorProduct`` (segments are split so multiplicities line up)."""
    # e3nn simplifies both inputs first (merging neighbours, dropping empty segments)
    in1 = list(as_irreps(irreps_in1, "irreps_in1").simplify())
    in2 = list(as_irreps(irreps_in2, "irreps_in2").simplify())
    n1, n2 = sum(m for m, _ in in1), sum(m for m, _ in in2)
    if n1 != n2:
        raise ValueError(f"elementwise needs the same number of irreps on both inputs, got {n1} and {n2}")
    i = 0
    while i < len(in1):
        (m1, r1), (m2, r2) = in1[i], in2[i]
        if m1 < m2:
            in2[i] = (m1, r2)
            in2.insert(i + 1, (m2 - m1, r2))
        if m2 < m1:
            in1[i] = (m2, r1)
            in1.insert(i + 1, (m1 - m2, r1))
        i += 1
    keep = _filter(filter_ir_out)
    out, ins = [], []
    for i, ((mul, r1), (_, r2)) in enumerate(zip(in1, in2)):
        for ir in Irrep(r1) * Irrep(r2):
            if keep is not None and ir not in keep:
                continue
            ins.append((i, i, len(out), "uuu", False))
            out.append((mul, ir))
    kw.setdefault("shared_weights", True)
    return cls(Irreps(in1), Irreps(in2), Irreps(out), ins, **kw)


def full(cls, irreps_in1, irreps_in2, filter_ir_out=None, **kw):
    """Every path, ``uvuv`` without weights, output sorted: e3nn's ``FullTensorProduct``
    (inputs simplified first, as e3nn does)."""
    in1 = as_irreps(irreps_in1, "irreps_in1").simplify()
    in2 = as_irreps(irreps_in2, "irreps_in2").simplify()
    keep = _filter(filter_ir_out)
    out, ins = [], []
    for i1, (m1, r1) in enumerate(in1):
        for i2, (m2, r2) in enumerate(in2):
            for ir in r1 * r2:
                if keep is not None and ir not in keep:
                    continue
                ins.append((i1, i2, len(out), "uvuv", False))
                out.append((m1 * m2, ir))
    out, perm, _ = Irreps(out).sort()
    ins = [(a, b, perm[k], m, w) for a, b, k, m, w in ins]
    kw.setdefault("shared_weights", True)
    return cls(in1, in2, out, ins, **kw)


def all_paths(cls, irreps_in1, irreps_in2, irreps_out, mode, *, has_weight=True, **kw):
    """Every allowed path in one ``mode`` whose multiplicities fit that mode.

    ``has_weight`` applies to every path (``uvw`` always has weights; ``uuw`` without
    weights only keeps outputs of multiplicity 1).
    """
    in1 = as_irreps(irreps_in1, "irreps_in1")
    in2 = as_irreps(irreps_in2, "irreps_in2")
    out = as_irreps(irreps_out, "irreps_out")
    fits = {
        "uvw": lambda a, b, c: True,
        "uvu": lambda a, b, c: a == c,
        "uvv": lambda a, b, c: b == c,
        "uuw": lambda a, b, c: a == b and (has_weight or c == 1),
        "uuu": lambda a, b, c: a == b == c,
        "uvuv": lambda a, b, c: a * b == c,
    }
    if mode not in fits:
        raise ValueError(f"mode={mode!r} is not one of {', '.join(fits)}")
    hw = True if mode == "uvw" else bool(has_weight)
    ins = [
        (i1, i2, io, mode, hw)
        for i1, (m1, r1) in enumerate(in1)
        for i2, (m2, r2) in enumerate(in2)
        for io, (mo, ro) in enumerate(out)
        if ro in r1 * r2 and fits[mode](m1, m2, mo)
    ]
    if not ins:
        raise ValueError(f"no {mode} path couples {in1} x {in2} -> {out}")
    return cls(in1, in2, out, ins, **kw)
