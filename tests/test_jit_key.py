"""tritp.jit_key: a generated kernel's Triton key without Triton's walk over its source.

That the formula equals Triton's key on real generated kernels of every family is checked in
``test_gpu_compile.py`` (it needs the interpreter off); here are the rules around it, on small
modules built with ``JITFunction`` directly (which the interpreter leaves alone)."""

import importlib.util
import textwrap

import pytest
from triton.runtime.jit import JITFunction

from tritp import jit_key

SELF_CONTAINED = '''
    import triton.language as tl
    from triton.runtime.jit import JITFunction


    def kern(x, y, N: tl.constexpr):
        DT: tl.constexpr = tl.float32
        i = tl.arange(0, N)
        tl.store(y + i, tl.load(x + i).to(DT) * {scale})


    kern = JITFunction(kern)
    MIN_BLOCK_Z = 1
'''

NAMES_A_GLOBAL = '''
    import triton.language as tl
    from triton.runtime.jit import JITFunction

    SCALE = tl.constexpr(2.0)


    def kern(x, y, N: tl.constexpr):
        i = tl.arange(0, N)
        tl.store(y + i, tl.load(x + i) * SCALE)


    kern = JITFunction(kern)
'''

CALLS_A_HELPER = '''
    import triton.language as tl
    from triton.runtime.jit import JITFunction


    def twice(v):
        return v * 2


    twice = JITFunction(twice)


    def kern(x, y, N: tl.constexpr):
        i = tl.arange(0, N)
        tl.store(y + i, twice(tl.load(x + i)))


    kern = JITFunction(kern)
'''


def load(tmp_path, text: str, name: str):
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(text))
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(autouse=True)
def fresh_verdict(monkeypatch):
    monkeypatch.delenv("TRITP_SEED_KEYS", raising=False)
    jit_key.reset()
    yield
    jit_key.reset()


def test_first_kernel_checks_the_formula_then_the_rest_are_keyed_by_it(tmp_path):
    first = load(tmp_path, SELF_CONTAINED.format(scale=2.0), "first")
    assert not jit_key.seed_cache_key(first)  # keyed by Triton, which checks the formula
    assert jit_key._verdict is True
    second = load(tmp_path, SELF_CONTAINED.format(scale=3.0), "second")
    assert jit_key.seed_cache_key(second)
    assert second.kern.hash == JITFunction(second.kern.fn).cache_key != first.kern.cache_key
    assert second.kern.used_global_vals == {}
    assert not jit_key.seed_cache_key(second)  # already keyed: left alone


def test_a_kernel_that_names_a_global_or_calls_a_jit_function_is_left_to_triton(tmp_path):
    jit_key.seed_cache_key(load(tmp_path, SELF_CONTAINED.format(scale=2.0), "ok"))
    for text, name in ((NAMES_A_GLOBAL, "glob"), (CALLS_A_HELPER, "helper")):
        mod = load(tmp_path, text, name)
        assert jit_key.sole_kernel(mod) is None
        assert not jit_key.seed_cache_key(mod) and mod.kern.hash is None
        # and Triton's key does differ from the formula there: seeding would have been wrong
        assert mod.kern.cache_key != jit_key.formula_key(mod.kern.src, mod.kern.starting_line_number)


def test_a_formula_triton_disagrees_with_turns_seeding_off_for_the_process(tmp_path, monkeypatch):
    monkeypatch.setattr(jit_key, "formula_key", lambda src, line: "0" * 64)
    assert not jit_key.seed_cache_key(load(tmp_path, SELF_CONTAINED.format(scale=2.0), "a"))
    assert jit_key._verdict is False
    b = load(tmp_path, SELF_CONTAINED.format(scale=3.0), "b")
    assert not jit_key.seed_cache_key(b) and b.kern.hash is None


def test_the_switch_and_the_interpreter(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITP_SEED_KEYS", "0")
    mod = load(tmp_path, SELF_CONTAINED.format(scale=2.0), "off")
    assert not jit_key.seed_cache_key(mod) and mod.kern.hash is None and jit_key._verdict is None
    monkeypatch.delenv("TRITP_SEED_KEYS")
    interpreted = load(tmp_path, SELF_CONTAINED.replace("JITFunction(kern)", "kern").format(scale=2.0), "plain")
    assert jit_key.sole_kernel(interpreted) is None  # not a JITFunction: nothing to key


def test_doctests():
    import doctest

    result = doctest.testmod(jit_key, report=True)
    assert result.attempted > 0 and result.failed == 0
