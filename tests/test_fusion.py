"""Fused numba kernels (einmlp/fusion.py): the same numbers as plain numpy, one pass per elementwise
chain, compiled once per plan and cached on disk, and used only where they pay.

The numpy results are checked against finite differences and autograd in test_derivations.py.
"""

from __future__ import annotations

import ast
import importlib.util

import numpy as np
import pytest
from conftest import DERIVATIONS, article_arrays
from test_derivations import directives

import einmlp
from einmlp import fusion
from einmlp.codegen import executed_source, python_source

pytestmark = pytest.mark.skipif(importlib.util.find_spec("numba") is None,
                                reason="numba is not installed (pip install numba): fused kernels are not tested")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("EINMLP_CACHE", str(tmp_path_factory.getbasetemp() / "einmlp-cache"))


def _same(result, expected, rtol=1e-12):
    result = result if isinstance(result, dict) else {"": result}
    expected = expected if isinstance(expected, dict) else {"": expected}
    for name, value in expected.items():
        assert result[name].dtype == value.dtype, name
        scale = max(1.0, float(np.max(np.abs(value))))
        np.testing.assert_allclose(result[name], value, rtol=rtol, atol=rtol * scale, err_msg=name)


@pytest.mark.parametrize("path", sorted(DERIVATIONS.glob("*.ein")), ids=lambda p: p.stem)
def test_every_derivation_gives_the_same_numbers_fused(path):
    prog = einmlp.load(path)
    d = directives(path)
    rng = np.random.default_rng(5)
    arrays = {name: rng.standard_normal(d["shapes"][name]) * 0.5 for name in prog.inputs}
    targets = [prog.grad(d["derive"])] + [prog.hessian(w) for w in d["hessian"]]
    for target in targets:
        plain, fused = target.compile(backend="numpy"), target.compile(backend="numba")
        _same(fused(**arrays), plain(**arrays))
        f32 = {n: a.astype(np.float32) for n, a in arrays.items()}
        _same(fused(**f32), plain(**f32), rtol=2e-4)  # float32 in, float32 out, no float64 inside


PROGRAMS = {
    "activations": ("Z[b,k] = X[b,j] W[j,k]\n"
                    "L = sum[b,k](relu(Z[b,k]) + sigmoid(Z[b,k]) * softplus(-Z[b,k]) + abs(Z[b,k])^3)", "W"),
    "division and roots": ("Z[b,k] = X[b,j] W[j,k]\nL = sum[b,k](sqrt(1 + Z[b,k]^2) / (2 + tanh(Z[b,k])))", "W"),
    "a length in the kernel": ("p(t) = 2 t\nL = sum[b](p(X[b,j] W[j,k] - c[k]))", "c"),
    "sin, cos, exp, log": ("Z[b,k] = X[b,j] W[j,k]\nL = sum[b,k](sin(Z[b,k]) cos(Z[b,k]) + log(1 + exp(Z[b,k])))", "W"),
}


@pytest.mark.parametrize("name", list(PROGRAMS))
def test_each_function_fuses_like_numpy(name):
    text, wrt = PROGRAMS[name]
    prog = einmlp.parse(text)
    rng = np.random.default_rng(1)
    arrays = {"X": rng.standard_normal((64, 3)), "W": rng.standard_normal((3, 5)), "c": rng.standard_normal(5)}
    arrays = {n: arrays[n] for n in prog.inputs}
    d = prog.grad(wrt)
    assert fusion.fuse(python_source(d.plan, "_compute", standalone=False), set(d.plan.outputs.values()))
    _same(d.compile(backend="numba")(**arrays), d.compile(backend="numpy")(**arrays))
    _same(prog.compile(backend="numba")(**arrays), prog.compile(backend="numpy")(**arrays))


def test_the_articles_elementwise_chain_is_one_kernel_without_temporaries():
    """Ytilde, 2 Ytilde and Cbar are one pass: none of them is stored."""
    g = einmlp.load(DERIVATIONS / "article.ein").grad(["W1", "W2"])
    source, kernels = executed_source(g.plan, fused=True)
    stored = {s.targets[0].id for s in ast.parse(source).body[0].body if isinstance(s, ast.Assign)}
    assert not stored & {"Ytilde", "Ytildebar", "Yhat", "_t7"}, source
    deleted = {n.id for s in ast.parse(source).body[0].body if isinstance(s, ast.Delete) for n in s.targets}
    assert {"B", "C", "Cbar"} <= deleted  # temporaries are freed after their last reader
    assert "Cbar" in stored  # read twice: by dW1's chain and by dW2
    assert source.count("_k") >= 1 and kernels.count("@vectorize") >= 1


def test_kernel_modules_hold_only_generated_names():
    """Nothing of a program's text but its checked names reaches the kernel module: here not even those."""
    helper = {n.id for n in ast.walk(ast.parse(fusion.CALL.format(LOOPS_UP_TO=1))) if isinstance(n, ast.Name)}
    allowed = {"np", "vectorize", "njit", "numpy", "numba", "_call", "range", "_i", "_j", "_out"} | helper | \
        {f"{p}{k}" for p in ("a", "_k", "_u", "_l") for k in range(100)}
    for path in sorted(DERIVATIONS.glob("*.ein")):
        prog = einmlp.load(path)
        g = prog.grad(directives(path)["derive"])
        fused = fusion.fuse(python_source(g.plan, "_compute", standalone=False), set(g.plan.outputs.values()))
        if fused:
            names = {n.id for n in ast.walk(ast.parse(fused[1])) if isinstance(n, ast.Name)}
            assert names <= allowed, names - allowed


def test_small_calls_run_plain_numpy_and_large_ones_fused(monkeypatch):
    g = einmlp.load(DERIVATIONS / "article.ein").grad(["W1", "W2"])
    fn = g.compile()
    small = article_arrays(batch=10)
    fn(**small)
    assert [fused for (*_, fused) in fn._functions_for] == [False]
    big = article_arrays(batch=fusion.FUSE_FROM // 4 + 1)
    _same(fn(**big), g.compile(backend="numpy")(**big))
    assert sorted(fused for (*_, fused) in fn._functions_for) == [False, True]
    assert not any(fused for (*_, fused) in g.compile(backend="numpy")._functions_for)


def test_kernels_are_cached_on_disk_and_a_changed_file_is_rewritten(tmp_path, monkeypatch):
    monkeypatch.setenv("EINMLP_CACHE", str(tmp_path))
    prog = einmlp.parse("Z[b,k] = X[b,j] W[j,k]\nL = sum[b,k](tanh(Z[b,k])^2 + 0.25 * Z[b,k])")
    g = prog.grad("W")
    _, module = fusion.fuse(python_source(g.plan, "_compute", standalone=False), set(g.plan.outputs.values()))
    files = list((tmp_path / "kernels").glob("einmlp_kernels_*.py")) if (tmp_path / "kernels").exists() else []
    assert not files
    arrays = {"X": np.ones((4, 3)), "W": np.ones((3, 2))}
    g.compile(backend="numba")(**arrays)
    (file,) = (tmp_path / "kernels").glob("einmlp_kernels_*.py")
    assert file.read_text() == module
    file.write_text("raise SystemExit('not einmlp code')\n")  # someone changed it: written again, then imported
    import sys
    sys.modules.pop(file.stem, None)
    _same(prog.grad("W").compile(backend="numba")(**arrays), g.compile(backend="numpy")(**arrays))
    assert file.read_text() == module


def test_edge_values_fuse_like_numpy():
    """nan, infinities, zeros and negative numbers through relu', sqrt, abs (abs' is sign), division."""
    prog = einmlp.parse("L = sum[i](relu(x[i]) * sqrt(abs(x[i])) * abs(x[i]) + 1 / (x[i] - 2) + relu(x[i])^2)")
    x = np.array([np.nan, -np.inf, -1.0, -0.0, 0.0, 0.5, 2.0, np.inf])
    d = prog.grad("x")
    with np.errstate(all="ignore"):
        fused, plain = d.compile(backend="numba")(x=x), d.compile(backend="numpy")(x=x)
    np.testing.assert_array_equal(fused, plain)  # the same nans and infinities, where they are


def test_a_temporary_written_into_a_later_reader_is_deleted_after_it():
    """Random program 13: inlining T2 * X4 moved a read of T2 after the plan's `del T2`."""
    from test_programs import case

    generated, arrays, of, wrt, order = case(13)
    d = einmlp.parse(generated.source).grad(wrt, of=of)
    _same(d.compile(backend="numba")(**arrays), d.compile(backend="numpy")(**arrays))


def test_the_numba_backend_without_numba_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(fusion, "available", lambda: False)
    g = einmlp.load(DERIVATIONS / "article.ein").grad("W1")
    with pytest.raises(einmlp.EinmlpError, match="needs numba, which is not installed"):
        g.compile(backend="numba")(**article_arrays())
    assert g.compile()(**article_arrays(batch=fusion.FUSE_FROM)).shape == (3, 4)  # the default falls back to numpy


KERNEL = ("def _compute(x, y, z):\n"
          "    q = np.heaviside(x - z, 0.5) * np.sqrt(np.abs(y)) + z / (x - 0.5) * np.sign(y) - 2\n"
          "    r = np.where((x > 0) & (y - z <= 0.25), q, 0.0)\n"
          "    return r\n")
SHAPES = [((64, 1), (1, 4), (64, 4)), ((64, 4), (4,), ()), ((1, 4), (64, 1), ()), ((5, 3), (5, 1), (1, 1)),
          ((2, 32), (2, 1), (32,)), ((64, 1), (64, 1), (64, 1)), ((64, 33), (1, 33), (64, 1)), ((3, 4, 2), (2,), ()),
          ((0, 4), (1, 4), (0, 1)), ((64, 4), (64, 4), (64, 4))]


@pytest.mark.parametrize("shapes", SHAPES, ids=str)
@pytest.mark.parametrize("types", [(np.float64,) * 3, (np.float32,) * 3, (np.float32, np.float64, np.float32)],
                         ids=lambda t: "-".join(np.dtype(d).name for d in t))
def test_a_kernel_over_a_short_last_axis_runs_as_loops_with_the_ufuncs_bits(shapes, types):
    """Broadcast along a last axis of 2 to 32, a kernel runs as two loops (numpy's broadcasting would
    run the ufunc's inner loop once a row); elsewhere as the ufunc. Either gives the same bits, the
    same type, nan, infinities and division by zero included."""
    _, module_source = fusion.fuse(KERNEL, {"r"})
    module = fusion.load_module(module_source)
    rng = np.random.default_rng(3)
    operands = []
    for shape, dtype in zip(shapes, types):
        value = rng.standard_normal(shape)
        value.flat[::7] = np.nan if value.size else value.flat[::7]
        value.flat[1::5] = 0.5
        value.flat[2::9] = -np.inf
        operands.append(value.astype(dtype) if shape else float(rng.standard_normal()))
    ran = []

    def loops(*args):
        ran.append(args[-1].shape)
        return module._l0(*args)
    with np.errstate(all="ignore"):
        result = module._call(module._u0, loops, *operands)
        expected = module._u0(*operands)
    np.testing.assert_array_equal(result, expected)
    assert result.dtype == expected.dtype == np.result_type(*operands)  # float32 stays float32, in the ufunc too
    full = np.broadcast_shapes(*shapes)
    broadcast = any(s != full and np.prod(s) > 1 for s in shapes)
    assert bool(ran) == (len(full) == 2 and 2 <= full[1] <= fusion.LOOPS_UP_TO and full[0] > 0 and broadcast)


def test_the_articles_gradients_at_a_large_batch_run_the_outer_product_as_loops():
    """Abar = 2 Cbar[i,0] W2[k,0] A[i,k]: (batch, 4) from (batch, 1) and (1, 4), the pattern the loops are for."""
    g = einmlp.load(DERIVATIONS / "article.ein").grad(["W1", "W2"])
    _, module_source = executed_source(g.plan, fused=True)
    assert "_l1(a0, a1, a2, _out)" in module_source
    big = article_arrays(batch=fusion.FUSE_FROM)
    _same(g.compile()(**big), g.compile(backend="numpy")(**big))
