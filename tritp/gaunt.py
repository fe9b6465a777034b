"""The Gaunt tensor product: ``tritp.compile(..., mode="gaunt")`` and :class:`GauntProduct`.

Channelwise product of two spherical functions given by their real spherical-harmonic
coefficients (e3nn's basis and layout), projected back onto the harmonics up to the output
degrees; the math, parity and normalization rules are in :mod:`tritp.codegen.gaunt_problem`.
Four generated implementations compute the same function:

* ``sparse``: the sparse CG kernels with Gaunt coefficients (O(L^5) unrolled nonzeros);
* ``grid``: Gauss-Legendre x uniform sphere grid at the exact size, GEMMs fused in one kernel;
* ``fft``: the 2D Fourier (torus) form with analytic tables, DFTs folded into the GEMM tables;
* ``separable``: the grid's polar nodes with the azimuthal integral in closed form, fp32 FMAs
  (O(L^3) per node; :mod:`tritp.codegen.gaunt_sep`).

``implementation="auto"`` asks the autotune cache (family ``"gaunt"``, registered by
:mod:`tritp.gaunt_tuning` when this module is imported), else applies
:func:`~tritp.codegen.gaunt_problem.size_rule` (sparse while every active degree is <= 3).
``gp.autotune()`` or :func:`tritp.gaunt_tuning.tune_gaunt` (``tritp autotune IN1 IN2 --mode
gaunt``) times the four, grid, fft and separable at several launches, and stores the fastest
for ``auto``; a grid, fft or separable module, ``auto`` or not, launches with its tuned launch when one is
stored (:func:`tritp.gaunt_tuning.tuned_launch`).

Example:
    >>> import torch, tritp
    >>> gp = tritp.compile("8x0e+8x1o+8x2e", "0e+1o+2e", lmax_out=2, mode="gaunt",
    ...                    weights=("in1", "out"), backend="reference")
    >>> str(gp.irreps_out), tuple(gp.weight_in1.shape)
    ('8x0e+8x1o+8x2e', (8, 3))
    >>> gp(torch.randn(5, 72), torch.randn(5, 9)).shape
    torch.Size([5, 72])
"""

from __future__ import annotations

import math

import torch

from . import gaunt_ops, gaunt_tuning  # gaunt_tuning registers the "gaunt" autotune family
from .codegen.gaunt_problem import FORWARD, IMPLEMENTATIONS, ROLES, GauntError, GauntProblem, size_rule
from .gaunt_kernels import check_launch, role_tensors
from .gaunt_reference import gaunt_reference
from .module import BACKENDS, _rows, check_operands, use_triton

WEIGHT_ROLES = {"in1": "x1", "in2": "x2", "out": "out"}
AUTO_BATCH = 10_000  # the batch "auto" asks the autotune cache about (compile time knows none)
_TABLE_ORDER = {f"_{tag}_{r}": (3 if tag == "idx" else 0) + i
                for tag in ("t32", "t64", "idx") for i, r in enumerate(ROLES)}


def default_precision() -> str:
    """``tl.dot`` precision for fp32 following torch: ``"ieee"`` under the default
    ``torch.get_float32_matmul_precision() == "highest"``, else ``"tf32"`` (the CG kernels'
    rule, :func:`tritp.kernels.dot_precision`)."""
    from .kernels import dot_precision

    return dot_precision()


def choose_implementation(problem: GauntProblem, batch: int = AUTO_BATCH, device=None) -> str:
    """``auto``: the tuned choice's ``impl`` (:func:`tritp.gaunt_tuning.tuned_choice`: the
    forward producer, fp32, ``batch`` samples, under the implementation-neutral name) when
    there is one, else :func:`~tritp.codegen.gaunt_problem.size_rule`.

    Example:
        >>> choose_implementation(GauntProblem("4x0e+4x1o", "0e+1o", lmax_out=2), batch=3)  # untuned
        'sparse'
    """
    found = gaunt_tuning.tuned_choice(problem, "float32", batch, device)
    return found.impl if found is not None else size_rule(problem)


def _weight_roles(weights) -> tuple:
    if weights is True:
        return tuple(WEIGHT_ROLES)
    if weights in (None, False):
        return ()
    names = (weights,) if isinstance(weights, str) else tuple(weights)
    bad = [w for w in names if w not in WEIGHT_ROLES]
    if bad:
        raise GauntError(f"weights: unknown {bad!r}; expected True, False or names among 'in1', 'in2', 'out'")
    return tuple(w for w in WEIGHT_ROLES if w in names)


def _index(irreps, channels: int, n_deg: int, src_mul: int, src_irreps) -> tuple:
    """Gather indices over the ``channels``-channel layout: ``(weight index c*n_deg + j,
    source index into an input whose multiplicity is src_mul)``."""
    w_idx, x_idx = [], []
    offs = src_irreps.offsets()
    for j, (_, ir) in enumerate(irreps):
        for c in range(channels):
            for m in range(ir.dim):
                w_idx.append(c * n_deg + j)
                x_idx.append(offs[j] + (c if src_mul > 1 else 0) * ir.dim + m)
    return torch.tensor(w_idx), torch.tensor(x_idx)


class GauntProduct(torch.nn.Module):
    """A Gaunt tensor product module; ``gp(x1, x2)`` with ``x1 [..., dim1]``, ``x2 [..., dim2]``
    (leading dimensions broadcast) returns ``[..., dim_out]``.

    With weights, ``weight_in1``, ``weight_in2``, ``weight_out`` are ``nn.Parameter`` of shape
    ``[channels, number of degrees]`` (initialized to 1), scaling every coefficient of one
    (channel, degree) before (inputs) or after (output) the product. A broadcast input
    (multiplicity 1) with weights becomes per-channel, so the kernels then read ``channels``
    copies of it. Built by :func:`compile_gaunt`.

    ``launches`` maps ``"float32"`` and ``"float64"`` (the compute dtype) to the grid/fft
    kernels' ``(BLOCK_R, num_warps, BLOCK_P)`` (separable: ``passes`` for ``BLOCK_P``), or None for
    :func:`~tritp.gaunt_kernels.launch_shape`'s default: ``launch`` if given (every dtype),
    else the tuned launch when one is stored (:func:`tritp.gaunt_tuning.tuned_launch`), looked
    up once here. It reaches the kernels through the op key (:func:`tritp.gaunt_ops.op_key`).
    """

    def __init__(self, problem: GauntProblem, *, weights=(), backend: str = "auto", launch=None):
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r} is not one of {', '.join(map(repr, BACKENDS))}")
        self.problem, self.backend = problem, backend
        self.irreps_in1, self.irreps_in2, self.irreps_out = problem.irreps_in1, problem.irreps_in2, problem.irreps_out
        self.implementation = problem.implementation
        self.weight_roles = _weight_roles(weights)
        self._dims = (problem.irreps_in1.dim, problem.irreps_in2.dim)
        C = problem.channels
        kernel = problem
        for name in self.weight_roles:
            role = WEIGHT_ROLES[name]
            irreps = problem.irreps(role)
            if problem.mul(role) == 1 and C > 1:  # per-channel weights make the input per-channel
                kernel = kernel.replace(**{f"irreps_{name}": [(C, ir) for _, ir in irreps]})
            w_idx, x_idx = _index(irreps, C, len(irreps), problem.mul(role), irreps)
            self.register_parameter(f"weight_{name}", torch.nn.Parameter(torch.ones(C, len(irreps))))
            self.register_buffer(f"_widx_{name}", w_idx, persistent=False)
            expand = role != "out" and problem.mul(role) == 1 and C > 1
            self.register_buffer(f"_xidx_{name}", x_idx if expand else None, persistent=False)
        self.kernel_problem = kernel
        self.key = kernel.key
        self.launches = self._launches(launch)
        self._op_keys = {dt: gaunt_ops.op_key(self.key, lc) for dt, lc in self.launches.items()}
        # grid/fft/separable tables ride along as op arguments: fp32 and fp64 copies, so that neither a
        # cast per call nor module.float() can cost the fp64 path its exactness (see _apply)
        self._table_names = ()
        if kernel.implementation in ("grid", "fft", "separable"):
            t64 = role_tensors(kernel, torch.float64, "cpu")
            names = []
            for tag, ts in (("t32", [t.float() for t in t64[:3]]), ("t64", t64[:3]), ("idx", t64[3:])):
                for role, t in zip(ROLES, ts):
                    self.register_buffer(f"_{tag}_{role}", t, persistent=False)
                    names.append(f"_{tag}_{role}")
            self._table_names = tuple(names)

    def _launches(self, launch) -> dict:
        dtypes = ("float32", "float64")
        if launch is None:
            return {dt: gaunt_tuning.tuned_launch(self.problem, dt, AUTO_BATCH) for dt in dtypes}
        if self.implementation not in gaunt_tuning.LAUNCHED:
            raise GauntError(f"launch={launch!r} is for the grid, fft and separable implementations, "
                             f"not {self.implementation!r}")
        return dict.fromkeys(dtypes, check_launch(launch, self.implementation))

    def extra_repr(self) -> str:
        tuned = {dt: ":".join(map(str, lc)) for dt, lc in self.launches.items() if lc is not None}
        return (f"{self.irreps_in1} x {self.irreps_in2} -> {self.irreps_out} | {self.implementation} | "
                f"{self.problem.normalization} | weights={list(self.weight_roles)} | backend={self.backend}"
                + (f" | launch={tuned}" if tuned else ""))

    def flops(self, implementation: str = None) -> int:
        """Forward FLOPs per (sample, channel); see :meth:`GauntProblem.flops`."""
        return self.kernel_problem.flops(implementation)

    def autotune(self, batch=AUTO_BATCH, directions=("fwd",), timer=None) -> list:
        """Time the four implementations of this product (grid, fft, separable at several launches;
        with this module's weights) on this GPU, or the interpreter, and store the fastest where
        ``implementation="auto"`` looks, and each of grid's, fft's and separable's fastest launch (see
        :mod:`tritp.gaunt_tuning`); this module keeps its implementation and launch: compile again.
        ``batch`` is one size or a list (``auto`` asks at :data:`AUTO_BATCH`); ``directions``
        some of ``fwd``, ``bwd``, ``dbl`` timed together; returns one
        :class:`~tritp.gaunt_tuning.GauntTuneResult` per batch.

        Example:
            >>> gp = tritp.compile("32x0e+32x1o+32x2e", "0e+1o+2e", mode="gaunt")  # doctest: +SKIP
            >>> [r.implementation for r in gp.autotune(directions=("fwd", "bwd"))]  # doctest: +SKIP
            ['grid']
        """
        batches = [batch] if isinstance(batch, int) else list(batch)
        return [gaunt_tuning.tune_gaunt(self.problem, b, directions=directions, timer=timer, weights=self.weight_roles)
                for b in batches]

    def precompile(self, batch=AUTO_BATCH, directions=("fwd", "bwd"), dtype=torch.float32, device=None) -> int:
        """Compile this product's kernels now, all at once in parallel, instead of one after
        another at their first launches (:func:`tritp.gaunt_launch.precompile_gaunt`); returns
        how many were compiled (0 under the Triton interpreter). ``directions``: some of
        ``fwd``, ``bwd``, ``dbl``; ``batch`` as you will run it (the launch follows it); nothing
        of batch size is allocated.

        Example:
            >>> gp = tritp.compile("32x0e+32x1o+32x2e", "0e+1o+2e", mode="gaunt")  # doctest: +SKIP
            >>> gp.precompile(batch=10_000)  # doctest: +SKIP
            3
        """
        from .gaunt_launch import precompile_gaunt

        launch = self.launches["float64" if dtype == torch.float64 else "float32"]
        return precompile_gaunt(self.kernel_problem, batch, directions, dtype, device, launch)

    def _apply(self, fn, recurse=True):
        # tables follow the module's device but keep their dtypes (module.double() must not
        # round-trip the fp32 copy, module.float() must not round the fp64 one)
        dtypes = {n: getattr(self, n).dtype for n in self._table_names}
        super()._apply(fn, recurse)
        for n, dt in dtypes.items():
            t = getattr(self, n)
            if t.dtype != dt:
                setattr(self, n, role_tensors(self.kernel_problem, torch.float64, t.device)[_TABLE_ORDER[n]].to(dt))
        return self

    def _tables(self, dtype) -> list:
        if not self._table_names:
            return []
        tag = "_t64_" if dtype == torch.float64 else "_t32_"
        return [getattr(self, tag + r) for r in ROLES] + [getattr(self, "_idx_" + r) for r in ROLES]

    def _scale(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if name not in self.weight_roles:
            return x
        xidx = getattr(self, f"_xidx_{name}")
        if xidx is not None:
            x = x[..., xidx]
        w = getattr(self, f"weight_{name}").to(x.dtype).reshape(-1)[getattr(self, f"_widx_{name}")]
        return x * w

    def _use_triton(self, device) -> bool:
        return use_triton(self.backend, device, "Gaunt product")

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        check_operands(x1, x2, self._dims, (self.irreps_in1, self.irreps_in2))
        x1, x2 = self._scale("in1", x1), self._scale("in2", x2)
        if not self._use_triton(x1.device):
            y = gaunt_reference(self.kernel_problem, x1, x2)
        else:
            d1, d2, do = x1.shape[-1], x2.shape[-1], self.irreps_out.dim
            bshape = torch.broadcast_shapes(x1.shape[:-1], x2.shape[:-1])
            Z = math.prod(bshape)
            args = [_rows(x1, bshape, d1, Z), _rows(x2, bshape, d2, Z)]
            key = self._op_keys["float64" if x1.dtype == torch.float64 else "float32"]
            y = gaunt_ops.run(key, FORWARD, Z, x1.dtype, args + self._tables(x1.dtype)).reshape(*bshape, do)
        return self._scale("out", y)


def compile_gaunt(irreps_in1, irreps_in2, irreps_out=None, *, lmax_out=None, normalization="orthonormal",
                  implementation="auto", weights=(), backend="auto", precision=None, grid=None,
                  launch=None) -> GauntProduct:
    """Build a :class:`GauntProduct` (what ``tritp.compile(..., mode="gaunt")`` calls).

    ``irreps_out`` (each degree once, multiplicity = channels) or ``lmax_out`` picks the output
    degrees (default: ``L1 + L2``, the whole product). ``normalization``: ``"orthonormal"``
    (coefficients of the product function in e3nn's orthonormal harmonics) or ``"integral"``
    (e3nn-jax: functions are ``sum c sqrt(4 pi) Y``, so the output is ``sqrt(4 pi)`` times the
    orthonormal one). ``implementation``: ``"auto"``, ``"sparse"``, ``"fft"``, ``"grid"`` or
    ``"separable"``.
    ``weights``: ``True`` or names among ``"in1"``, ``"in2"``, ``"out"``. ``precision``: fp32
    ``tl.dot`` precision (``"ieee"``, ``"tf32"``, ``"tf32x3"``; default follows
    ``torch.get_float32_matmul_precision()``). ``grid`` overrides the exact grid size (testing).
    ``launch``: the grid/fft kernels' ``(BLOCK_R, num_warps, BLOCK_P)``, the separable kernel's
    ``(BLOCK_R, num_warps, passes)`` (default: the tuned one
    if stored, else :func:`~tritp.gaunt_kernels.launch_shape`'s; see :class:`GauntProduct`).

    Example:
        >>> gp = compile_gaunt("16x0e+16x1o", "0e+1o", lmax_out=2, implementation="grid")
        >>> gp.implementation, gp.problem.grid_size
        ('grid', (3, 5))
    """
    if implementation != "auto" and implementation not in IMPLEMENTATIONS:
        raise GauntError(f"implementation={implementation!r} is not one of 'auto', "
                         f"{', '.join(map(repr, IMPLEMENTATIONS))}")
    problem = GauntProblem(irreps_in1, irreps_in2, irreps_out, lmax_out=lmax_out, normalization=normalization,
                           implementation="grid" if implementation == "auto" else implementation, grid=grid,
                           precision=precision or default_precision())
    if implementation == "auto":
        problem = problem.replace(implementation=choose_implementation(problem))
    return GauntProduct(problem, weights=weights, backend=backend, launch=launch)


__all__ = ["GauntProduct", "compile_gaunt", "choose_implementation", "default_precision", "ROLES"]
