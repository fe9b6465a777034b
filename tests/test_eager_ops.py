"""The eager path (tritp.eager_ops) and the memoized launch recipe (tritp.kernels.recipe).

Plain eager calls skip the torch.library ops' dispatch; anything that traces or transforms
goes through the ops. Both must compute the same thing bit for bit, to every order."""

import pytest
import torch

import tritp
import tritp.kernels
import tritp.tuning
from tritp.eager_ops import Produce, ProduceFused, eager_ok

F64 = torch.float64


def _inputs(tp, z=5, dtype=F64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(z, tp.irreps_in1.dim, generator=g, dtype=dtype, requires_grad=True)
    x2 = torch.randn(z, tp.irreps_in2.dim, generator=g, dtype=dtype, requires_grad=True)
    w = torch.randn(tp.weight_numel if tp.shared_weights else (z, tp.weight_numel), generator=g, dtype=dtype,
                    requires_grad=True)
    return x1, x2, w


def _third_order(tp, x1, x2, w):
    """Output, first, second and third derivatives (a training step with forces and one more)."""
    y = tp(x1, x2, w)
    cot = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)
    g1 = torch.autograd.grad(y, (x1, x2, w), cot, create_graph=True)
    g2 = torch.autograd.grad((g1[1] ** 2).sum() + (g1[0] * g1[0]).sum(), (x1, x2, w), create_graph=True)
    g3 = torch.autograd.grad(sum((g * g).sum() for g in g2), (x1, x2, w), allow_unused=True)
    return [y, *g1, *g2, *(g for g in g3 if g is not None)]


CASES = [("channelwise fused", ("4x0e+4x1o+2x2e", "0e+1o+2e", "0e+1o+2e"), dict(mode="channelwise")),
         ("shared uvw", ("2x0e+2x1o", "2x0e+1x1o", "2x0e+2x1o"), dict(shared_weights=True))]


@pytest.mark.parametrize("name,irreps,kw", CASES, ids=[c[0] for c in CASES])
def test_eager_path_equals_the_ops_to_third_order(name, irreps, kw, monkeypatch):
    tp = tritp.compile(*irreps, **kw)
    fast = _third_order(tp, *_inputs(tp))
    monkeypatch.setenv("TRITP_FAST_EAGER", "0")
    slow = _third_order(tp, *_inputs(tp))
    assert len(fast) == len(slow) >= 10
    for a, b in zip(fast, slow):
        assert torch.equal(a, b)


def _counted(monkeypatch, *classes) -> list:
    """Patch ``apply`` of the eager Functions ``classes`` to count their calls (one list item each)."""
    calls = []
    for cls in classes:
        monkeypatch.setattr(cls, "apply", lambda *a, _real=cls.apply: calls.append(1) or _real(*a))
    return calls


def _count_applies(monkeypatch) -> dict:
    seen = {"eager": 0, "op": 0}
    for cls in (Produce, ProduceFused):
        real = cls.apply

        def apply(*a, _real=real):
            seen["eager"] += 1
            return _real(*a)

        monkeypatch.setattr(cls, "apply", apply)
    real_pick = tritp.ops.pick

    def pick(*a):
        seen["op"] += 1
        return real_pick(*a)

    monkeypatch.setattr(tritp.ops, "pick", pick)
    return seen


def test_plain_eager_calls_skip_the_ops_and_the_switch_restores_them(monkeypatch):
    tp = tritp.compile("4x0e+4x1o", "0e+1o", "0e+1o", mode="channelwise")
    seen = _count_applies(monkeypatch)
    x1, x2, w = _inputs(tp)
    torch.autograd.grad(tp(x1, x2, w).sum(), (x1, x2, w))
    assert seen == {"eager": 2, "op": 0}  # forward, then the fused backward
    monkeypatch.setenv("TRITP_FAST_EAGER", "0")
    torch.autograd.grad(tp(x1, x2, w).sum(), (x1, x2, w))
    assert seen == {"eager": 2, "op": 1}  # the op's backward calls its fused op itself


def test_tracing_and_transforms_take_the_ops():
    from torch._subclasses.fake_tensor import FakeTensorMode

    t = torch.ones(2, 3)
    assert eager_ok([t, torch.nn.Parameter(torch.ones(3))])
    with FakeTensorMode():
        assert not eager_ok([t])
    with torch.device("cpu"):  # a torch-function mode
        assert not eager_ok([t])

    class Sub(torch.Tensor):
        pass

    assert not eager_ok([t.as_subclass(Sub)])
    seen = []
    torch.func.vmap(lambda row: seen.append(eager_ok([row])) or row)(t)
    assert seen == [False]


def test_make_fx_records_the_op():
    from torch.fx.experimental.proxy_tensor import make_fx

    tp = tritp.compile("4x0e+4x1o", "0e+1o", "0e+1o", mode="channelwise")
    x1, x2, w = (t.detach() for t in _inputs(tp))
    gm = make_fx(lambda a, b, c: tp(a, b, c))(x1, x2, w)
    assert "tritp.produce" in gm.code
    assert torch.equal(gm(x1, x2, w), tp(x1, x2, w))


def test_a_launch_recipe_is_chosen_once_and_follows_the_environment(monkeypatch):
    tp = tritp.compile("4x0e+4x1o", "0e+1o", "0e+1o", mode="channelwise")
    x1, x2, w = (t.detach() for t in _inputs(tp, dtype=torch.float32))
    chosen = []
    real = tritp.tuning.choose
    monkeypatch.setattr(tritp.tuning, "choose", lambda *a, **k: chosen.append(a[3]) or real(*a, **k))
    y = tp(x1, x2, w)
    assert len(chosen) == 1
    assert torch.equal(tp(x1, x2, w), y) and len(chosen) == 1  # memoized
    tp(torch.cat([x1, x1]), torch.cat([x2, x2]), torch.cat([w, w]))  # 10 rows: another batch bucket
    assert chosen == [5, 10]
    monkeypatch.setenv("TRITP_COALESCE", "3d")  # another kernel form: chosen anew
    assert torch.equal(tp(x1, x2, w), y) and len(chosen) == 3
    tritp.tuning.clear_memo()
    tp(x1, x2, w)
    assert len(chosen) == 4


@pytest.mark.parametrize("scatter", ["atomic", "deterministic"])
def test_convolution_eager_path_equals_the_ops_to_third_order(scatter, monkeypatch):
    """The fused convolution (fused backward and fused second pass included) takes the eager
    path by default and computes bit for bit what its ops compute."""
    from tritp.eager_ops import ConvProduce, ConvProduceFused

    conv = tritp.compile_conv("4x0e+2x1o", "0e+1o+2e", "0e+1o+2e", mode="channelwise", scatter=scatter)
    g = torch.Generator().manual_seed(3)
    n, E = 5, 17
    src, dst = torch.randint(0, n, (E,), generator=g), torch.randint(0, n, (E,), generator=g)
    x = torch.randn(n, conv.irreps_in1.dim, generator=g, dtype=F64)
    ea = torch.randn(E, conv.irreps_in2.dim, generator=g, dtype=F64)
    w = torch.randn(E, conv.weight_numel, generator=g, dtype=F64)
    applies = _counted(monkeypatch, ConvProduce, ConvProduceFused)

    def run():
        ts = [t.clone().requires_grad_() for t in (x, ea, w)]
        return _third_order(lambda a, b, c: conv(a, b, c, src, dst, n), *ts)

    fast = run()
    assert len(applies) >= 5
    monkeypatch.setenv("TRITP_FAST_EAGER", "0")
    slow = run()
    assert len(fast) == len(slow) >= 10
    for a, b in zip(fast, slow):
        assert torch.equal(a, b)


def test_convolution_range_check_on_the_eager_path():
    conv = tritp.compile_conv("2x0e", "0e", "2x0e", mode="channelwise", scatter="atomic")
    src, dst = torch.tensor([0, 1, 2]), torch.tensor([1, 0, 3])
    x, ea, w = torch.randn(3, 2), torch.randn(3, 1), torch.randn(3, conv.weight_numel)
    with pytest.raises(IndexError, match=r"dst\[2\] = 3 is out of range for 3 nodes"):
        conv(x, ea, w, src, dst, 3)


def test_pruned_passes_and_broadcast_rows_launch_the_same_kernels_on_both_paths(monkeypatch):
    """A forces pass (x2 alone, then the parameters' gradients of a function of the forces) with
    x1 one row broadcast over the batch: the same producers launch in the same order and give
    the same bits on both paths."""
    tp = tritp.compile("4x0e+4x1o+2x2e", "0e+1o+2e", "0e+1o+2e", mode="channelwise")
    g = torch.Generator().manual_seed(2)
    base = [torch.randn(1, tp.irreps_in1.dim, generator=g, dtype=F64),
            torch.randn(6, tp.irreps_in2.dim, generator=g, dtype=F64),
            torch.randn(6, tp.weight_numel, generator=g, dtype=F64)]
    launched, real = [], tritp.ops.produce
    monkeypatch.setattr(tritp.ops, "produce", lambda p, spec, *a, **k: launched.append(spec.target) or real(p, spec, *a, **k))

    def run():
        x1, x2, w = (t.clone().requires_grad_() for t in base)
        y = tp(x1, x2, w)
        (f,) = torch.autograd.grad(y, x2, torch.ones_like(y), create_graph=True)
        return [y, f, *torch.autograd.grad((f * f.sin()).sum(), (x1, w))]

    fast = run()
    fast_launches, launched[:] = list(launched), []
    monkeypatch.setenv("TRITP_FAST_EAGER", "0")
    slow = run()
    assert fast_launches == launched and "x1+w+x2" not in launched  # pruned: no three-gradient kernel
    for a, b in zip(fast, slow):
        assert torch.equal(a, b)


def test_traced_and_transformed_calls_run_the_ops():
    """torch.jit.trace records the op; fake tensors get the op's fake shape; legacy batched
    tensors (is_grads_batched) are not taken for plain ones."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    tp = tritp.compile("4x0e+4x1o", "0e+1o", "0e+1o", mode="channelwise")
    x1, x2, w = (t.detach() for t in _inputs(tp))
    traced = torch.jit.trace(lambda a, b, c: tp(a, b, c), (x1, x2, w))
    assert "tritp::produce" in str(traced.graph)
    assert torch.equal(traced(x1, x2, w), tp(x1, x2, w))
    with FakeTensorMode() as mode:
        y = tp(mode.from_tensor(x1), mode.from_tensor(x2), mode.from_tensor(w))
    assert y.shape == (5, tp.irreps_out.dim)
    seen = []
    torch._vmap_internals._vmap(lambda row: seen.append(eager_ok([row])) or row)(torch.ones(2, 3))
    assert seen == [False]


def test_forward_mode_ad_fails_loud_on_both_paths(monkeypatch):
    import torch.autograd.forward_ad as fwAD

    tp = tritp.compile("4x0e+4x1o", "0e+1o", "0e+1o", mode="channelwise")
    x1, x2, w = (t.detach() for t in _inputs(tp))
    for fast in ("1", "0"):
        monkeypatch.setenv("TRITP_FAST_EAGER", fast)
        with fwAD.dual_level():
            with pytest.raises(NotImplementedError, match="forward-mode AD is not supported"):
                tp(fwAD.make_dual(x1, torch.ones_like(x1)), x2, w)
            tp(x1, x2, w)  # no tangent anywhere: fine inside a dual level


@pytest.mark.parametrize("impl", ["grid", "sparse"])
def test_gaunt_eager_path_equals_the_ops_to_second_order(impl, monkeypatch):
    from tritp.eager_ops import GauntProduce

    gp = tritp.compile("3x0e+3x1o+3x2e", "0e+1o+2e", lmax_out=2, mode="gaunt", implementation=impl,
                       weights=("in1", "out"))
    g = torch.Generator().manual_seed(8)
    x = torch.randn(4, gp.irreps_in1.dim, generator=g, dtype=F64)
    y = torch.randn(4, gp.irreps_in2.dim, generator=g, dtype=F64)
    applies = _counted(monkeypatch, GauntProduce)

    def run():
        a, b = x.clone().requires_grad_(), y.clone().requires_grad_()
        out = gp(a, b)
        g1 = torch.autograd.grad((out * out.sin()).sum(), (a, b), create_graph=True)
        return [out, *g1, *torch.autograd.grad(sum((t * t).sum() for t in g1), (a, b))]

    fast = run()
    assert len(applies) >= 3
    monkeypatch.setenv("TRITP_FAST_EAGER", "0")
    slow = run()
    for a, b in zip(fast, slow):
        assert torch.equal(a, b)
