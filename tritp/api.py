"""``tritp.compile``: build a tensor product module from irreps and instructions.

Example:
    >>> import tritp
    >>> tp = tritp.compile("32x0e+32x1o", "0e+1o", "32x0e+32x1o", "uvu", shared_weights=False)
    >>> tp.weight_numel, tp.shared_weights, tp.internal_weights
    (128, False, False)
"""

from __future__ import annotations

from .codegen import MODES, Problem
from .module import TensorProduct

FORMS = ("channelwise", "fully_connected", "full", "elementwise")


def compile(irreps_in1, irreps_in2, irreps_out=None, instructions=None, *, mode=None, shared_weights=None,
            internal_weights=None, irrep_normalization="component", path_normalization="element",
            layout="mul_ir", backend="auto", in1_var=None, in2_var=None, out_var=None, **gaunt_options):
    """Compile an E(3)-equivariant tensor product into a :class:`tritp.TensorProduct` module.

    ``instructions`` is a list of e3nn tuples ``(i_in1, i_in2, i_out, mode, has_weight[,
    path_weight])``, or a mode name: one of e3nn's ``uvw, uvu, uvv, uuw, uuu, uvuv`` (every
    allowed path in that mode whose multiplicities fit) or one of the forms
    ``channelwise`` (MACE/NequIP: uvu, one output segment per path, ``irreps_out`` is the filter
    of kept irreps and the module's ``irreps_out`` is derived), ``fully_connected``, ``full``,
    ``elementwise``. ``mode=`` is the keyword spelling of the same. With neither, compile builds
    what ``e3nn.o3.FullyConnectedTensorProduct`` builds (every allowed uvw path, internal
    weights). ``shared_weights`` and ``internal_weights`` default as in e3nn (channelwise:
    per-sample weights). ``backend``: ``"auto"`` (Triton on CUDA; on CPU the Triton interpreter
    if ``TRITON_INTERPRET=1``, else the PyTorch reference with a one-time warning),
    ``"triton"`` or ``"reference"``.

    ``mode="gaunt"`` builds a :class:`tritp.gaunt.GauntProduct` instead: the channelwise product
    of two spherical functions, with the keywords of :func:`tritp.gaunt.compile_gaunt`
    (``lmax_out``, ``normalization``, ``implementation``, ``weights``, ``precision``), e.g.
    ``compile("32x0e+32x1o", "0e+1o", lmax_out=2, mode="gaunt")``.

    Example:
        >>> tp = compile("8x0e+8x1o", "8x0e+8x1o", "8x0e+8x1o")  # fully connected, internal weights
        >>> tp.internal_weights, tp.weight_numel
        (True, 2048)
    """
    if isinstance(instructions, str):
        if mode is not None and mode != instructions:
            raise ValueError(f"instructions={instructions!r} and mode={mode!r} disagree; give one")
        mode, instructions = instructions, None
    if mode == "gaunt":
        from .gaunt import compile_gaunt

        defaults = (("shared_weights", shared_weights, None), ("internal_weights", internal_weights, None),
                    ("irrep_normalization", irrep_normalization, "component"), ("layout", layout, "mul_ir"),
                    ("path_normalization", path_normalization, "element"), ("in1_var", in1_var, None),
                    ("in2_var", in2_var, None), ("out_var", out_var, None))
        cg_only = [k for k, v, d in defaults if v != d]
        if cg_only:
            raise TypeError(f"mode='gaunt' does not take {', '.join(cg_only)} (see tritp.gaunt.compile_gaunt)")
        return compile_gaunt(irreps_in1, irreps_in2, irreps_out, backend=backend, **gaunt_options)
    if gaunt_options:
        raise TypeError(f"compile() got unexpected keyword arguments {', '.join(sorted(gaunt_options))} "
                        "(only mode='gaunt' takes them)")
    if instructions is not None and mode is not None:
        raise ValueError("give either an instruction list or mode=, not both")
    kw = dict(irrep_normalization=irrep_normalization, path_normalization=path_normalization, layout=layout,
              in1_var=in1_var, in2_var=in2_var, out_var=out_var)
    if irreps_out is None and mode not in ("full", "elementwise"):
        raise ValueError(f"irreps_out is required for mode={mode or 'fully_connected'!r}")
    if instructions is not None:
        sw = True if shared_weights is None else shared_weights
        problem = Problem(irreps_in1, irreps_in2, irreps_out, list(instructions), shared_weights=sw, **kw)
    else:
        mode = mode or "fully_connected"
        if mode == "channelwise":
            sw = False if shared_weights is None else shared_weights
            problem = Problem.channelwise(irreps_in1, irreps_in2, irreps_out, shared_weights=sw, **kw)
        elif mode == "fully_connected":
            sw = True if shared_weights is None else shared_weights
            problem = Problem.fully_connected(irreps_in1, irreps_in2, irreps_out, shared_weights=sw, **kw)
        elif mode in ("full", "elementwise"):
            form = Problem.full if mode == "full" else Problem.elementwise
            problem = form(irreps_in1, irreps_in2, irreps_out, shared_weights=True if shared_weights is None
                           else shared_weights, **kw)
        elif mode in MODES:
            sw = True if shared_weights is None else shared_weights
            problem = Problem.all_paths(irreps_in1, irreps_in2, irreps_out, mode, shared_weights=sw, **kw)
        else:
            raise ValueError(f"mode={mode!r} is not one of {', '.join(MODES + FORMS)}")
    if internal_weights is None:
        internal_weights = problem.shared_weights and problem.weight_numel > 0
    return TensorProduct(problem, internal_weights=internal_weights, backend=backend)
