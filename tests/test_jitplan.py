"""Plans run whole as one numba function (einmlp/jitplan.py): the same numbers as plain numpy,
only for small float64 numpy calls that have run long enough, and only where numba agrees and
is faster.

The numpy results are checked against finite differences and autograd in test_derivations.py;
the article's gradients run whole are checked against finite differences of a hand-written loss here.
"""

from __future__ import annotations

import ast
import importlib.util

import numpy as np
import pytest
from conftest import DERIVATIONS, article_arrays, flat_results
from test_derivations import directives

import einmlp
from einmlp import compiled, fusion, jitplan
from einmlp.codegen import python_source

pytestmark = pytest.mark.skipif(importlib.util.find_spec("numba") is None,
                                reason="numba is not installed (pip install numba): whole-plan compiling is not tested")

STAY_NUMPY: set[str] = set()  # derivations whose gradients run as numpy (none: each is compiled whole)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("EINMLP_CACHE", str(tmp_path_factory.getbasetemp() / "einmlp-cache"))


@pytest.fixture
def eager(monkeypatch):
    """Compile whole at the first call and take it whatever it costs (speed is benchmarked, not tested)."""
    monkeypatch.setattr(compiled, "WHOLE_AFTER", 0.0)
    monkeypatch.setattr(jitplan, "fastest", lambda run, args, repeats=5: 0.0)


def _runs_whole(fn) -> bool:
    if not isinstance(fn, compiled.Compiled):  # value_and_grad's function: the Compiled it calls
        (fn,) = [c.cell_contents for c in fn.__closure__ if isinstance(c.cell_contents, compiled.Compiled)]
    return fn._hot is not None and not isinstance(fn._hot[-1], compiled._Warming)


def _same(result, expected, rtol=1e-12):
    result, expected = flat_results(result), flat_results(expected)
    assert result.keys() == expected.keys()
    for name, value in expected.items():
        assert type(result[name]) is type(value) and result[name].dtype == value.dtype, name
        scale = max(1.0, float(np.max(np.abs(value))))
        np.testing.assert_allclose(result[name], value, rtol=rtol, atol=rtol * scale, err_msg=name)


@pytest.mark.parametrize("path", sorted(DERIVATIONS.glob("*.ein")), ids=lambda p: p.stem)
def test_every_derivation_runs_whole_with_numpys_numbers(path, eager):
    prog = einmlp.load(path)
    d = directives(path)
    rng = np.random.default_rng(5)
    arrays = {name: rng.standard_normal(d["shapes"][name]) * 0.5 for name in prog.inputs}
    gradients = [prog.grad(d["derive"]), prog.value_and_grad(d["derive"])]
    for target in gradients + [prog.hessian(w) for w in d["hessian"]]:
        fn, plain = target.compile(), target.compile(backend="numpy")
        expected = plain(**arrays)
        _same(fn(**arrays), expected)  # numpy, then compiled whole and checked against it
        _same(fn(**arrays), expected)  # whole
        if target in gradients:  # a Hessian with a Kronecker delta (_arange) or 4 operands stays numpy
            assert _runs_whole(fn) == (path.stem not in STAY_NUMPY), getattr(fn, "whole_refused", "value_and_grad")
    fn = prog.compile()
    _same(fn(**arrays), prog.compile(backend="numpy")(**arrays))
    _same(fn(**arrays), prog.compile(backend="numpy")(**arrays))


def test_the_articles_gradients_run_whole_match_finite_differences(eager):
    arrays = article_arrays(batch=10)
    fn = einmlp.load(DERIVATIONS / "article.ein").grad(["W1", "W2"]).compile()
    fn(**arrays)
    grads = fn(**arrays)
    assert _runs_whole(fn)

    def loss(X, W1, W2, Y):  # written by hand, independent of einmlp
        return float(((Y - ((X @ W1) ** 2 @ W2) ** 3) ** 2).sum())
    for name in ("W1", "W2"):
        fd = np.zeros_like(arrays[name])
        for idx in np.ndindex(fd.shape):
            plus, minus = arrays[name].copy(), arrays[name].copy()
            plus[idx] += 1e-6
            minus[idx] -= 1e-6
            fd[idx] = (loss(**{**arrays, name: plus}) - loss(**{**arrays, name: minus})) / 2e-6
        np.testing.assert_allclose(grads[name], fd, rtol=1e-6, atol=1e-8)


def test_a_signature_runs_numpy_until_it_has_spent_whole_after(monkeypatch):
    monkeypatch.setattr(compiled, "WHOLE_AFTER", 0.02)
    monkeypatch.setattr(jitplan, "fastest", lambda run, args, repeats=5: 0.0)
    fn = einmlp.load(DERIVATIONS / "article.ein").grad(["W1", "W2"]).compile()
    arrays = article_arrays(batch=10)
    fn(**arrays)
    assert isinstance(fn._hot[-1], compiled._Warming)  # a first call never waits for a compile
    for _ in range(100_000):
        if _runs_whole(fn):
            break
        fn(**arrays)
    assert _runs_whole(fn)
    (entry,) = fn._signatures.values()
    assert not isinstance(entry[1], compiled._Warming)
    _same(fn(**arrays), fn(*[arrays[n] for n in fn.plan.inputs]))  # by position too


def test_numpy_stays_where_it_is_faster(monkeypatch):
    monkeypatch.setattr(compiled, "WHOLE_AFTER", 0.0)
    monkeypatch.setattr(jitplan, "fastest", lambda run, args, repeats=5: float("inf"))
    fn = einmlp.load(DERIVATIONS / "article.ein").grad(["W1", "W2"]).compile()
    arrays = article_arrays(batch=10)
    first = fn(**arrays)
    _same(fn(**arrays), first)
    assert not _runs_whole(fn) and fn.whole_refused.startswith("numpy was faster")


def test_a_failing_compile_leaves_the_numpy_function(monkeypatch):
    def broken(*args):
        raise RuntimeError("numba is broken here")
    monkeypatch.setattr(compiled, "WHOLE_AFTER", 0.0)
    monkeypatch.setattr(jitplan, "compile_whole", broken)
    fn = einmlp.load(DERIVATIONS / "article.ein").grad(["W1", "W2"]).compile()
    arrays = article_arrays(batch=10)
    expected = einmlp.load(DERIVATIONS / "article.ein").grad(["W1", "W2"]).compile(backend="numpy")(**arrays)
    _same(fn(**arrays), expected)
    _same(fn(**arrays), expected)
    assert not _runs_whole(fn) and "numba is broken here" in fn.whole_refused


def test_numba_is_taken_only_where_it_agrees_with_numpy():
    x = np.arange(3.0)
    assert callable(jitplan.agrees(lambda a: a * 2, None, [x], x * 2))
    assert "differs from numpy's" in jitplan.agrees(lambda a: a * 2 + 1e-6, None, [x], x * 2)
    assert "type, shape or dtype" in jitplan.agrees(lambda a: (a * 2)[:2], None, [x], x * 2)
    assert "type, shape or dtype" in jitplan.agrees(lambda a: (a * 2).astype(np.float32), None, [x], x * 2)
    assert "keys" in jitplan.agrees(lambda a: (a, a), ("p", "q"), [x], {"p": x})
    assert "raised ZeroDivisionError" in jitplan.agrees(lambda a: 1 // 0, None, [x], x)
    nan = np.array([np.nan, 1.0])
    assert callable(jitplan.agrees(lambda a: a.copy(), None, [nan], nan))  # nan where numpy has nan
    run = jitplan.agrees(lambda a: (a * 2, float(a.sum())), ("p", "q"), [x], {"p": x * 2, "q": np.float64(3.0)})
    result = run(x)
    assert type(result["q"]) is np.float64 and result["q"] == 3.0  # a number comes back as numpy's
    zero_d = jitplan.agrees(lambda a: float(a.sum()), None, [x], np.array(3.0))(x)
    assert type(zero_d) is np.ndarray and zero_d.shape == () and zero_d == 3.0


def test_results_run_whole_own_their_memory_and_numbers_are_numpy_floats(eager):
    prog = einmlp.parse("L = x[i] y[i]\nH[j,i] = W[i,j]")
    arrays = {"x": np.arange(3.0), "y": np.ones(3), "W": np.ones((2, 3))}
    grad = prog.grad(["x", "y"], of="L").compile()
    transposed = prog.compile("H")
    value = prog.compile("L")
    for _ in range(2):
        g, h, v = grad(**arrays), transposed(W=arrays["W"]), value(x=arrays["x"], y=arrays["y"])
    assert _runs_whole(grad) and _runs_whole(transposed) and _runs_whole(value)
    assert not np.shares_memory(g["x"], arrays["y"]) and not np.shares_memory(g["y"], arrays["x"])
    assert not np.shares_memory(h, arrays["W"]) and h.shape == (3, 2)
    assert type(v) is np.float64 and v == 3.0


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_softmaxs_shift_compiled_whole_is_numpys_maximum(axis, eager):
    """np.max(x, axis=k, keepdims=True), which numba lacks, as a loop: the same numbers, nan where numpy's is."""
    x = np.random.default_rng(3).standard_normal((3, 4, 5))
    x[1, 2, 3] = np.nan
    call = jitplan._max_keep_call(ast.parse(f"np.max(x, axis={axis}, keepdims=True)", mode="eval").body)
    source = jitplan.HELPERS + f"\n\n@njit(error_model='numpy', cache=True)\ndef _plan(x):\n    return {call}\n"
    np.testing.assert_array_equal(fusion.load_module(source)._plan(x), np.max(x, axis=axis, keepdims=True))
    assert jitplan._max_keep_call(ast.parse("np.max(x, axis=1)", mode="eval").body) is None


def test_a_new_layout_after_compiling_gives_the_same_numbers(eager):
    fn = einmlp.load(DERIVATIONS / "article.ein").grad(["W1", "W2"]).compile()
    arrays = article_arrays(batch=10)
    fn(**arrays)
    fn(**arrays)
    assert _runs_whole(fn)
    fortran = dict(arrays, X=np.asfortranarray(arrays["X"]), W1=arrays["W1"].T.copy().T)
    _same(fn(**fortran), einmlp.load(DERIVATIONS / "article.ein").grad(["W1", "W2"]).compile(backend="numpy")(**arrays))


def test_only_small_float64_numpy_calls_of_the_chosen_backend_run_whole(eager):
    g = einmlp.load(DERIVATIONS / "article.ein").grad(["W1", "W2"])
    small = article_arrays(batch=10)
    for fn, arrays in [(g.compile(), {n: a.astype(np.float32) for n, a in small.items()}),
                       (g.compile(), article_arrays(batch=fusion.FUSE_FROM // 4 + 1)),
                       (g.compile(backend="numpy"), small), (g.compile(backend="numba"), small)]:
        fn(**arrays)
        fn(**arrays)
        assert not any(isinstance(f, compiled._Warming) for _, f in fn._signatures.values())


@pytest.mark.parametrize("subscripts", ["a,b->ba", "a,b->ab", "a,ab->a", "ab->ba", "ab->", "a,a->", "ab,b->",
                                        "a->a", "ab,ab->b", "abc,b->ca", "a,bc->cab"])
def test_a_contraction_written_for_numba_is_numpys_einsum(subscripts):
    inputs = subscripts.split("->")[0].split(",")
    rng = np.random.default_rng(2)
    sizes = {"a": 3, "b": 4, "c": 5, "d": 2}
    operands = [rng.standard_normal([sizes[i] for i in labels]) for labels in inputs]
    names = ["x", "y"][:len(operands)]
    expression = jitplan.broadcast_einsum(subscripts, names)
    got = eval(expression, {}, dict(zip(names, operands)))  # noqa: S307 - our own generated expression
    np.testing.assert_allclose(got, np.einsum(subscripts, *operands), rtol=1e-12)
    assert np.shape(got) == np.shape(np.einsum(subscripts, *operands))
    assert jitplan.broadcast_einsum("aa->a", ["x"]) is None  # a diagonal
    assert jitplan.broadcast_einsum("a,b,c->abc", list("xyz")) is None
    assert jitplan.broadcast_einsum("ab,bc->ac", ["x", "y"]) is None  # a matrix product: a*b*c numbers at once


def test_a_sum_over_several_axes_runs_whole_one_axis_at_a_time(eager):
    """numba has no `sum(axis=(0, 2))`: the plan's reduction is written as sums over one axis each."""
    source = "def _plan(T):\n    S = T.sum(axis=(0, 2))\n    L = T.sum(axis=(0, 1, 2))\n    return {'S': S, 'L': L}\n"
    module, keys = jitplan.module_source(source, {})
    assert "T.sum(axis=2).sum(axis=0)" in module and "T.sum(axis=2).sum(axis=1).sum(axis=0)" in module
    prog = einmlp.parse("L = sum[a,b,c](T[a,b,c]^2 + T[a,b,c])")
    t = np.random.default_rng(2).standard_normal((3, 4, 5))
    for target in (prog.value_and_grad("T"), prog):
        fn = target.compile()
        expected = target.compile(backend="numpy")(T=t)
        _same(fn(T=t), expected)
        _same(fn(T=t), expected)
        assert _runs_whole(fn)


def test_elementwise_statements_run_whole_as_loops_over_their_own_shapes(eager):
    """numba's array expressions broadcast at every element: `2 Cbar W2.T A` is written as two loops
    reading Cbar[i, 0] and W2.T[0, k], for the shapes of this signature."""
    g = einmlp.load(DERIVATIONS / "article.ein").grad(["W1", "W2"])
    arrays = article_arrays(batch=7)
    args = [arrays[n] for n in g.plan.inputs]
    plan_source = python_source(g.plan, "_plan", standalone=False)
    source, _ = jitplan.module_source(plan_source, {}, jitplan.values(plan_source, {}, args))
    assert "Abar[_i0, _i1] = 2 * _v6_0[_i0, 0] * _v6_1[0, _i1] * _v6_2[_i0, _i1]" in source
    assert "C = B @ W2" in source  # BLAS stays BLAS
    one_row = article_arrays(batch=1)  # a batch of 1 is a length-1 axis too: read at 0, a source of its own
    rows = jitplan.module_source(plan_source, {}, jitplan.values(plan_source, {}, [one_row[n] for n in g.plan.inputs]))
    assert rows[0] != source and "_v6_0[0, 0]" in rows[0]
    for batch in (1, 7):
        fn, plain = g.compile(), g.compile(backend="numpy")
        given = article_arrays(batch=batch)
        _same(fn(**given), plain(**given))
        _same(fn(**given), plain(**given))
        assert _runs_whole(fn)
