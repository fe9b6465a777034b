"""A MACE/NequIP-style interaction block on tritp, trained with torch.compile on energies and
forces of a toy molecule dataset the script generates itself.

The potential:

1. edge vectors ``r_ij = pos[dst] - pos[src]`` within each molecule, their real spherical
   harmonics up to l = 2 (e3nn's basis and normalization: ``e3nn.o3.spherical_harmonics``
   when e3nn is installed, else the few lines of :func:`spherical_harmonics_l2` below);
2. a radial MLP on a Bessel basis of ``|r_ij|`` (times a smooth cutoff envelope) giving one
   weight vector per edge;
3. **tritp layer 1**, the interaction: a channelwise (``uvu``) tensor product of the source
   node's features with the edge's spherical harmonics, weighted by the radial MLP, then a
   scatter-sum of the messages onto the destination nodes;
4. **tritp layer 2**, the product basis: a fully connected tensor product of the node features
   with themselves into scalars (internal weights), as MACE's symmetric contraction does;
5. a linear readout to atomic energies, summed per molecule.

The dataset is random clusters of 5 atoms of two species with a Morse pair potential;
reference energies and analytic forces come from that potential.

Training uses the forces pattern of the design notes (section 4): the function computing the
energy *and* the forces (``torch.autograd.grad(E, pos, create_graph=True)``) is compiled with
``fullgraph=True`` and ``torch._dynamo.config.trace_autograd_ops = True``; the loss on both is
back-propagated outside it (double backward through the tritp ops).

At the end the same model is built with ``e3nn.o3.TensorProduct`` in place of the two tritp
layers (same instructions, same weights), checked to give the same energies, and one training
step of each is timed. On CPU the tritp kernels run through the Triton interpreter
(``TRITON_INTERPRET=1``, set here when there is no CUDA device), which emulates every program
in Python: the CPU ratio says nothing about GPU speed.

Run::

    python examples/interaction_block.py                 # CUDA if available, else CPU
    python examples/interaction_block.py --steps 3 --device cpu
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

import torch  # torch does not import triton: TRITON_INTERPRET can still be set below

SPECIES = 2
SH_IRREPS = "0e+1o+2e"
N_BASIS = 8
CUTOFF = 5.0

# Morse pair potential per species pair: depth D, width a, equilibrium distance r0
MORSE_D = torch.tensor([[1.0, 0.8], [0.8, 1.2]], dtype=torch.float64)
MORSE_A = torch.tensor([[1.5, 1.3], [1.3, 1.1]], dtype=torch.float64)
MORSE_R0 = torch.tensor([[1.1, 1.25], [1.25, 1.4]], dtype=torch.float64)


# ------------------------------------------------------------------------------------------
# toy dataset
# ------------------------------------------------------------------------------------------


def morse_energy_forces(pos, species):
    """Energy and analytic forces of one cluster, float64."""
    n = pos.shape[0]
    i, j = torch.triu_indices(n, n, 1)
    d = pos[i] - pos[j]
    r = d.norm(dim=-1)
    si, sj = species[i], species[j]
    D, a, r0 = MORSE_D[si, sj], MORSE_A[si, sj], MORSE_R0[si, sj]
    x = torch.exp(-a * (r - r0))
    energy = (D * (1 - x) ** 2 - D).sum()
    dE_dr = 2 * D * a * (1 - x) * x
    fij = -(dE_dr / r)[:, None] * d  # force on i from the pair (i, j); j gets the opposite
    forces = torch.zeros_like(pos).index_add(0, i, fij).index_add(0, j, -fij)
    return energy, forces


def random_cluster(n_atoms, gen, min_dist=0.9, radius=1.6):
    pts = []
    while len(pts) < n_atoms:
        p = (torch.rand(3, generator=gen, dtype=torch.float64) * 2 - 1) * radius
        if p.norm() <= radius and all((p - q).norm() >= min_dist for q in pts):
            pts.append(p)
    return torch.stack(pts)


def make_dataset(n_mols, n_atoms, seed=0):
    """All molecules as one batched graph (fully connected inside each molecule)."""
    gen = torch.Generator().manual_seed(seed)
    pos, species, mol, src, dst, energy, forces = [], [], [], [], [], [], []
    for m in range(n_mols):
        p = random_cluster(n_atoms, gen)
        s = torch.randint(0, SPECIES, (n_atoms,), generator=gen)
        e, f = morse_energy_forces(p, s)
        i, j = torch.meshgrid(torch.arange(n_atoms), torch.arange(n_atoms), indexing="ij")
        keep = i != j
        src.append(i[keep] + m * n_atoms)
        dst.append(j[keep] + m * n_atoms)
        pos.append(p), species.append(s), mol.append(torch.full((n_atoms,), m)), energy.append(e), forces.append(f)
    species = torch.cat(species)
    energy = torch.stack(energy)
    # Subtract per-species atomic reference energies (least squares), as one does for real data.
    counts = torch.stack([torch.bincount(s, minlength=SPECIES) for s in species.view(n_mols, n_atoms)]).double()
    shift = torch.linalg.lstsq(counts, energy[:, None]).solution[:, 0]
    return dict(pos=torch.cat(pos), species=torch.nn.functional.one_hot(species, SPECIES).double(),
                mol=torch.cat(mol), src=torch.cat(src), dst=torch.cat(dst), n_mols=n_mols,
                energy=energy - counts @ shift, forces=torch.cat(forces))


# ------------------------------------------------------------------------------------------
# model
# ------------------------------------------------------------------------------------------


def spherical_harmonics_l2(vec):
    """Real spherical harmonics l = 0, 1, 2 of the directions of ``vec``, in e3nn's basis with
    ``normalization="component"`` (equal to ``e3nn.o3.spherical_harmonics([0, 1, 2], vec,
    normalize=True)``)."""
    x, y, z = (vec / vec.norm(dim=-1, keepdim=True)).unbind(-1)
    s3, s5, s15 = math.sqrt(3.0), math.sqrt(5.0), math.sqrt(15.0)
    return torch.stack([
        torch.ones_like(x),
        s3 * x, s3 * y, s3 * z,
        s15 * x * z, s15 * x * y, s5 * (y * y - 0.5 * (x * x + z * z)), s15 * y * z, s15 / 2 * (z * z - x * x),
    ], dim=-1)


def sh_function():
    try:
        from e3nn import o3
    except ImportError:
        return spherical_harmonics_l2, "own l<=2 implementation"
    return (lambda v: o3.spherical_harmonics([0, 1, 2], v, normalize=True, normalization="component"),
            "e3nn.o3.spherical_harmonics")


def bessel_basis(r):
    """``sqrt(2/c) sin(n pi r / c) / r`` times a smooth polynomial cutoff envelope."""
    n = torch.arange(1, N_BASIS + 1, dtype=r.dtype, device=r.device)
    u = r / CUTOFF
    envelope = 1 - 10 * u ** 3 + 15 * u ** 4 - 6 * u ** 5
    return math.sqrt(2 / CUTOFF) * torch.sin(n * math.pi * u) / r * envelope


def e3nn_twin(tp):
    """``e3nn.o3.TensorProduct`` with exactly the instructions and weights of tritp module ``tp``."""
    from e3nn import o3

    p = tp.problem
    e = o3.TensorProduct(str(p.irreps_in1), str(p.irreps_in2), str(p.irreps_out),
                         [i.as_tuple() for i in p.instructions],
                         irrep_normalization=p.irrep_normalization, path_normalization=p.path_normalization,
                         shared_weights=p.shared_weights, internal_weights=tp.internal_weights)
    if tp.internal_weights:
        e.weight = torch.nn.Parameter(tp.weight.detach().clone())
    return e


class Potential(torch.nn.Module):
    """Embedding -> interaction (tritp channelwise TP + scatter) -> product (tritp fully
    connected TP into scalars) -> linear readout to atomic energies."""

    def __init__(self, channels, sh, avg_neighbors):
        super().__init__()
        import tritp

        c = channels
        self.sh = sh
        self.avg_neighbors = float(avg_neighbors)
        self.embed = torch.nn.Linear(SPECIES, c, bias=False)
        # tritp layer 1: node scalars x edge SH -> c x (0e + 1o + 2e), one weight vector per edge
        self.interaction = tritp.compile(f"{c}x0e", SH_IRREPS, SH_IRREPS, mode="channelwise")
        self.radial = torch.nn.Sequential(
            torch.nn.Linear(N_BASIS, 16), torch.nn.SiLU(), torch.nn.Linear(16, self.interaction.weight_numel))
        mid = str(self.interaction.irreps_out)
        self.mid_dim = self.interaction.irreps_out.dim
        # tritp layer 2: invariants of the aggregated features (|v|^2-like products), internal weights
        self.product = tritp.compile(mid, mid, f"{c}x0e", mode="fully_connected")
        self.readout = torch.nn.Linear(c, 1)

    def use_e3nn(self):
        """Swap both tritp layers for ``e3nn.o3.TensorProduct`` twins (same weights)."""
        self.interaction = e3nn_twin(self.interaction)
        self.product = e3nn_twin(self.product)
        return self

    def forward(self, pos, species, src, dst, mol, n_mols: int):
        vec = pos[dst] - pos[src]
        r = vec.norm(dim=-1, keepdim=True)
        h = self.embed(species)
        msg = self.interaction(h[src], self.sh(vec), self.radial(bessel_basis(r)))
        node = torch.zeros(pos.shape[0], self.mid_dim, dtype=msg.dtype, device=msg.device)
        node = node.index_add(0, dst, msg) / self.avg_neighbors
        atomic = self.readout(self.product(node, node)).squeeze(-1)
        return torch.zeros(n_mols, dtype=atomic.dtype, device=atomic.device).index_add(0, mol, atomic)


def energy_and_forces(model, pos, species, src, dst, mol, n_mols: int):
    """What gets compiled: energies and forces (``create_graph=True``: the loss on forces is
    differentiated again, outside)."""
    energy = model(pos, species, src, dst, mol, n_mols)
    forces = -torch.autograd.grad(energy.sum(), pos, create_graph=True)[0]
    return energy, forces


def loss_fn(energy, forces, data, n_atoms, force_weight=1.0):
    le = (((energy - data["energy"]) / n_atoms) ** 2).mean()
    lf = ((forces - data["forces"]) ** 2).mean()
    return le + force_weight * lf, le, lf


def train_step(step_fn, model, data, n_atoms, opt=None):
    pos = data["pos"].detach().requires_grad_()
    e, f = step_fn(model, pos, data["species"], data["src"], data["dst"], data["mol"], data["n_mols"])
    loss, le, lf = loss_fn(e, f, data, n_atoms)
    if opt is not None:
        opt.zero_grad()
    loss.backward()
    if opt is not None:
        opt.step()
    return loss.item(), le.item(), lf.item()


def time_steps(step_fn, model, data, n_atoms, device, repeats):
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    train_step(step_fn, model, data, n_atoms)  # warm-up: compile and load kernels
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        train_step(step_fn, model, data, n_atoms)
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    model.zero_grad()
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=None, help="training steps (default 30 on CUDA, 8 on CPU)")
    ap.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    ap.add_argument("--molecules", type=int, default=None, help="molecules (default 64 on CUDA, 6 on CPU)")
    ap.add_argument("--atoms", type=int, default=5, help="atoms per molecule (default 5)")
    ap.add_argument("--channels", type=int, default=None, help="channels per irrep (default 32 on CUDA, 4 on CPU)")
    ap.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate (default 1e-2)")
    ap.add_argument("--backend", default=None,
                    help="torch.compile backend (default inductor on CUDA; aot_eager on CPU, where the "
                         "Triton interpreter dominates and inductor's C++ compile only adds start-up time)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed steps per implementation (default 5 on CUDA, 2 on CPU)")
    ap.add_argument("--no-e3nn", action="store_true", help="skip the comparison with e3nn")
    args = ap.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    steps = args.steps or (30 if cuda else 8)
    repeats = args.repeats or (5 if cuda else 2)
    if steps < 1 or repeats < 1 or args.atoms < 2:
        ap.error("--steps and --repeats must be >= 1, --atoms >= 2")
    if not cuda:
        # No GPU: run the generated Triton kernels through the interpreter (must precede the
        # first import of triton, which tritp's runtime does).
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import tritp  # noqa: F401  (after TRITON_INTERPRET)

    backend = args.backend or ("inductor" if cuda else "aot_eager")
    n_mols = args.molecules or (64 if cuda else 6)
    channels = args.channels or (32 if cuda else 4)
    torch.manual_seed(0)

    data = make_dataset(n_mols, args.atoms, seed=0)
    data = {k: (v.to(device=device, dtype=torch.float32) if v.is_floating_point() else v.to(device))
            if isinstance(v, torch.Tensor) else v for k, v in data.items()}
    sh, sh_name = sh_function()
    model = Potential(channels, sh, avg_neighbors=args.atoms - 1).to(device)
    where = "CUDA" if cuda else ("CPU, Triton interpreter" if os.environ.get("TRITON_INTERPRET") == "1" else "CPU")
    print(f"device {device} ({where}); {n_mols} molecules x {args.atoms} atoms, {data['src'].numel()} edges; "
          f"{channels} channels; spherical harmonics: {sh_name}")
    print(f"tritp layer 1 (interaction): {model.interaction}")
    print(f"tritp layer 2 (product):     {model.product}")
    print(f"torch.compile(backend={backend!r}, fullgraph=True) of energy+forces, trace_autograd_ops=True")

    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    losses = []
    t_start = time.perf_counter()
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        step_fn = torch.compile(energy_and_forces, backend=backend, fullgraph=True)
        for step in range(1, steps + 1):
            loss, le, lf = train_step(step_fn, model, data, args.atoms, opt)
            losses.append(loss)
            print(f"step {step:3d}  loss {loss:.6e}  (energy/atom mse {le:.3e}, force mse {lf:.3e})")
        print(f"training: {time.perf_counter() - t_start:.1f} s for {steps} steps (first step includes compile)")
        ok = all(math.isfinite(x) for x in losses)
        if len(losses) > 1:
            print(f"loss {losses[0]:.6e} -> {losses[-1]:.6e} ({'decreased' if losses[-1] < losses[0] else 'DID NOT DECREASE'})")

        if args.no_e3nn:
            return 0 if ok else 1
        try:
            import e3nn  # noqa: F401
        except ImportError:
            print("e3nn not installed: no comparison")
            return 0 if ok else 1

        import copy

        twin = copy.deepcopy(model).use_e3nn().to(device)
        inputs = (data["species"], data["src"], data["dst"], data["mol"], data["n_mols"])
        precision = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("highest")  # compare without tf32 (tritp's tl.dot honours this)
        try:
            e_t, f_t = energy_and_forces(model, data["pos"].detach().requires_grad_(), *inputs)
            e_e, f_e = energy_and_forces(twin, data["pos"].detach().requires_grad_(), *inputs)
        finally:
            torch.set_float32_matmul_precision(precision)
        de, df = (e_t - e_e).abs().max().item(), (f_t - f_e).abs().max().item()
        print(f"\nsame model with e3nn.o3.TensorProduct (same weights): max |E_tritp - E_e3nn| = {de:.2e}, "
              f"max |F_tritp - F_e3nn| = {df:.2e}")
        ok &= de <= 1e-4 * max(1.0, e_e.abs().max().item()) and df <= 1e-4 * max(1.0, f_e.abs().max().item())

        t_tritp = time_steps(step_fn, model, data, args.atoms, device, repeats)
        e3nn_fn = torch.compile(energy_and_forces, backend=backend, fullgraph=True)
        label = f"compiled, {backend}"
        try:
            t_e3nn = time_steps(e3nn_fn, twin, data, args.atoms, device, repeats)
        except Exception as exc:  # e3nn under torch.compile is not guaranteed; time it eagerly then
            print(f"e3nn did not compile ({type(exc).__name__}); timing it eagerly")
            label = "eager"
            t_e3nn = time_steps(energy_and_forces, twin, data, args.atoms, device, repeats)
    print(f"one training step (energy + forces + backward), median of {repeats}:")
    print(f"  tritp ({'Triton kernels' if cuda else 'Triton interpreter on CPU'}, compiled, {backend}): "
          f"{t_tritp:9.1f} ms")
    print(f"  e3nn ({label}): {t_e3nn:9.1f} ms")
    print(f"  speedup of tritp over e3nn: {t_e3nn / t_tritp:.3g}x")
    if not cuda:
        print("  (on CPU tritp's kernels run through the Triton interpreter, which emulates each program in "
              "Python; this ratio says nothing about GPU speed)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
