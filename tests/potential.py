"""A small potential with two tritp layers, shared by the torch.compile and gradient-pruning
tests: species embedding -> channelwise product with edge harmonics under per-edge radial
weights -> scatter-sum -> fully connected product with internal weights -> energy; plus the
energy-and-forces function and a training step on both (float64 throughout).
"""

import math

import torch

import tritp

DT = torch.float64


def sh_l01(vec):
    """Real spherical harmonics l = 0, 1 in e3nn's basis, component normalization."""
    n = vec / vec.norm(dim=-1, keepdim=True)
    return torch.cat([torch.ones_like(n[..., :1]), math.sqrt(3.0) * n], dim=-1)


class Potential(torch.nn.Module):
    """Species embedding -> channelwise tensor product with edge SH and per-edge radial
    weights (tritp layer 1) -> scatter-sum to nodes -> fully connected tensor product of the
    node features with themselves into scalars, internal weights (tritp layer 2) -> energy."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Linear(2, 3, bias=False, dtype=DT)
        self.tp1 = tritp.compile("3x0e", "0e+1o", "0e+1o", mode="channelwise")
        self.radial = torch.nn.Sequential(torch.nn.Linear(4, 8, dtype=DT), torch.nn.SiLU(),
                                          torch.nn.Linear(8, self.tp1.weight_numel, dtype=DT))
        mid = str(self.tp1.irreps_out)
        self.tp2 = tritp.compile(mid, mid, "2x0e", mode="fully_connected").to(DT)
        self.n_mid = self.tp1.irreps_out.dim

    def forward(self, pos, species, src, dst):
        vec = pos[dst] - pos[src]
        r = vec.norm(dim=-1, keepdim=True)
        freqs = torch.arange(1, 5, dtype=pos.dtype, device=pos.device)
        basis = torch.sin(freqs * r) / r  # Bessel-like radial basis
        h = self.embed(species)
        msg = self.tp1(h[src], sh_l01(vec), self.radial(basis))
        node = torch.zeros(pos.shape[0], self.n_mid, dtype=msg.dtype, device=msg.device).index_add(0, dst, msg)
        return self.tp2(node, node).sum()


def energy_forces(model, pos, species, src, dst):
    e = model(pos, species, src, dst)
    f = -torch.autograd.grad(e, pos, create_graph=True)[0]
    return e, f


def make_system(n, seed):
    g = torch.Generator().manual_seed(seed)
    pos = (1.5 * torch.randn(n, 3, dtype=DT, generator=g)).requires_grad_()
    species = torch.nn.functional.one_hot(torch.arange(n) % 2, 2).to(DT)
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    keep = i != j
    return pos, species, i[keep], j[keep]


def clone_system(system):
    pos, *rest = system
    return (pos.detach().clone().requires_grad_(), *rest)


def training_step(fn, model, system):
    """Energy and forces from ``fn``; loss on both; ``loss.backward()`` outside ``fn``."""
    model.zero_grad()
    pos = system[0]
    e, f = fn(model, *system)
    loss = (e - 1.0) ** 2 + (f ** 2).sum()
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return e.detach(), f.detach(), grads, pos.grad.detach().clone()
