"""Matrix products on MKL (einmlp/blas.py): numpy's numbers for every layout BLAS can read,
numpy's own `@` for the rest, MKL only where it agreed with numpy on a shape's first product,
and derived gradients routed through it that match finite differences and autograd.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from conftest import DERIVATIONS, article_arrays, assert_gradient, random_arrays

import einmlp
from einmlp import blas, fusion
from einmlp.codegen import executed_source

needs_mkl = pytest.mark.skipif(not blas.available(),
                               reason="MKL is not installed (pip install mkl): products on MKL are not tested")


def _close(result, expected):
    assert result.shape == expected.shape and result.dtype == expected.dtype
    assert result.flags.c_contiguous
    eps = np.finfo(expected.dtype).eps
    np.testing.assert_allclose(result, expected, rtol=64 * eps, atol=64 * eps * max(1.0, np.max(np.abs(expected))))


def _layouts(rng, dtype=np.float64):
    """(name, a, b, whether MKL can read it): matrices, views with gaps, transposes, stacks."""
    def r(*shape):
        return rng.standard_normal(shape).astype(dtype)
    wide, stack = r(40, 70), r(6, 40, 70)
    return [
        ("C @ C", r(30, 20), r(20, 25), True),
        ("F @ C", np.asfortranarray(r(30, 20)), r(20, 25), True),
        ("C.T @ C.T", r(20, 30).T, r(25, 20).T, True),
        ("columns of a wider matrix", wide[:, :20], r(20, 25), True),
        ("every other row", wide[::2, :20], wide[:20, 5:30], True),
        ("a row", r(1, 20), r(20, 25), True),
        ("a column", r(30, 20), r(20, 1), True),
        ("an outer product", r(30, 1), r(1, 25), True),
        ("reversed rows", r(30, 20)[::-1], r(20, 25), False),
        ("a broadcast matrix", np.broadcast_to(r(1, 20), (30, 20)), r(20, 25), False),
        ("every other column", wide[:, ::2], r(35, 25), False),
        ("a stack of rows @ matrix", r(6, 30, 20), r(20, 25), True),
        ("a transposed stack @ matrix", np.transpose(r(6, 20, 30), (0, 2, 1)), r(20, 25), False),
        ("rows of a wider stack @ matrix", stack[:, :, :20], r(20, 25), True),
        ("some rows of each matrix of a stack @ matrix", stack[:, :30, :20], r(20, 25), False),
        ("stack @ stack", r(6, 30, 20), r(6, 20, 25), True),
        ("stack @ transposed stack", r(6, 30, 20), np.transpose(r(6, 25, 20), (0, 2, 1)), True),
        ("transposed stack @ stack", np.transpose(r(6, 20, 30), (0, 2, 1)), r(6, 20, 25), True),
        ("every other matrix of a stack", stack[::2, :30, :20], r(3, 20, 25), True),
        ("a stack broadcast against one matrix", r(1, 30, 20), r(6, 20, 25), False),
        ("a matrix broadcast against a stack", r(30, 20), r(6, 20, 25), False),
    ]


@needs_mkl
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_every_layout_blas_reads_gives_numpys_product(monkeypatch, dtype):
    monkeypatch.setattr(blas, "MKL_FROM", 0)
    products = blas.Products(blas.mkl())
    for name, a, b, readable in _layouts(np.random.default_rng(0), dtype):
        planned = products._planned(a, b)
        assert (planned is not None) == readable, name
        if planned is not None:
            _close(planned[1](), a @ b)


class _Subclass(np.ndarray):
    pass


@needs_mkl
def test_what_mkl_does_not_take_stays_numpys_matmul(monkeypatch):
    monkeypatch.setattr(blas, "MKL_FROM", 0)
    products = blas.Products(blas.mkl())
    rng = np.random.default_rng(1)
    x = rng.standard_normal((50, 20))
    assert products._planned(x.T, x) is None  # one array times its transpose: numpy's syrk
    assert products._planned(x.astype(np.float32), rng.standard_normal((20, 3))) is None  # two types
    assert products._planned(x.astype(np.int64), np.ones((20, 3), np.int64)) is None
    assert products._planned(x.view(_Subclass), rng.standard_normal((20, 3))) is None  # its own `@`, perhaps
    assert products._planned(x, rng.standard_normal(20)) is None  # a vector: BLAS gemv, nothing to gain
    assert products._planned(np.ones((0, 20)), rng.standard_normal((20, 3))) is None
    monkeypatch.setattr(blas, "MKL_FROM", 1 << 20)
    assert products._planned(x, rng.standard_normal((20, 3))) is None  # small: numpy's call costs less
    assert products._planned(rng.standard_normal((1000, 100)), rng.standard_normal((100, 20))) is not None


class _WrongGemm:
    """A BLAS that is very fast and fills its result with nan: what a misread layout would look like."""

    def __init__(self):
        self.gemm = {t: self._gemm for t in blas._TYPES}
        self.batched = {t: self._batched for t in blas._TYPES}
        self.calls = 0

    def _gemm(self, *args):
        self.calls += 1
        m, n, out = args[3], args[4], args[12]
        ctypes.memset(out, 0xFF, m * n * 8)  # all bits set: nan

    def _batched(self, *args):
        self.calls += 1
        m, n, out, batch = args[3], args[4], args[14], args[17]
        ctypes.memset(out, 0xFF, batch * m * n * 8)


def test_a_product_mkl_gets_wrong_is_left_to_numpy_however_fast():
    wrong = _WrongGemm()
    products = blas.Products(wrong)
    rng = np.random.default_rng(2)
    for a, b in [(rng.standard_normal((300, 200)), rng.standard_normal((200, 100))),
                 (rng.standard_normal((4, 200, 100)), rng.standard_normal((4, 100, 60)))]:
        for _ in range(3):
            np.testing.assert_array_equal(products(a, b), a @ b)
    assert wrong.calls == 2 * (blas.TRIES + 1)  # tried on each shape's first product only
    assert list(products.choice.values()) == [False, False]


@needs_mkl
def test_a_shape_keeps_its_library_so_its_results_never_change(monkeypatch):
    products = blas.Products(blas.mkl())
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((512, 256)), rng.standard_normal((256, 128))
    first = products(a, b)
    for _ in range(5):
        np.testing.assert_array_equal(products(a, b), first)
    (key, use), = products.choice.items()
    assert first.flags.c_contiguous
    _close(first, a @ b)
    monkeypatch.setitem(products.choice, key, True)  # whichever the measurement chose, MKL's numbers are numpy's
    _close(products(a, b), a @ b)


def test_routing_writes_each_matrix_product_as_a_call():
    source = "def f(X, W, V):\n    A = X @ W\n    return (A @ V.T).sum() + np.reshape(X, (-1, 3)).T @ A\n"
    routed = blas.routed(source)
    assert "@" not in routed
    assert routed.count("_mm(") == 3 and "_mm(A, V.T)" in routed and "_mm(X, W)" in routed
    assert blas.routed("def f(x):\n    return x * 2\n") is None
    syrk = blas.routed("def f(X, s):\n    Xs = X * s\n    return Xs.T @ Xs + X @ X.T + X.T @ Xs\n")
    assert "Xs.T @ Xs" in syrk and "X @ X.T" in syrk and "_mm(X.T, Xs)" in syrk


def test_einmlp_mkl_0_turns_the_routing_off(monkeypatch):
    monkeypatch.setenv("EINMLP_MKL", "0")
    monkeypatch.setattr(blas, "_mkl", False)
    monkeypatch.setattr(blas, "_products", None)
    assert blas.mkl() is None and blas.products() is None and not blas.available()


@pytest.fixture
def every_product_on_mkl(monkeypatch):
    """Large-array code for every call, and every product MKL can read on MKL (if it agrees with numpy)."""
    monkeypatch.setattr(fusion, "FUSE_FROM", 0)
    monkeypatch.setattr(blas, "MKL_FROM", 0)
    products = blas.Products(blas.mkl())
    monkeypatch.setattr(blas, "_products", products)

    def first(key, run, a, b):
        result, expected = run(), a @ b
        products.choice[key] = blas._agree(result, expected, a, b)
        return result if products.choice[key] else expected
    monkeypatch.setattr(products, "_first", first)
    return products


WIDE = "H[b,z] = tanh(X[b,d] W1[d,z] + c1[z])\nO[b,k] = H[b,z] W2[z,k] + c2[k]\nL = (O[b,k] - T[b,k])^2"
ATTENTION = ("S[b,t,u] = Q[b,t,d] K[b,u,d]\nP[b,t,u] = exp(S[b,t,u]) / sum[v](exp(S[b,t,v]))\n"
             "O[b,t,e] = P[b,t,u] V[b,u,d] W[d,e]\nL = (O[b,t,e] - Y[b,t,e])^2")


@needs_mkl
@pytest.mark.parametrize("text, wrt, shapes", [
    (WIDE, ["W1", "c1", "W2", "c2"], {"X": (9, 4), "W1": (4, 6), "c1": (6,), "W2": (6, 3), "c2": (3,), "T": (9, 3)}),
    (ATTENTION, ["Q", "K", "V", "W"], {"Q": (2, 5, 3), "K": (2, 5, 3), "V": (2, 5, 3), "W": (3, 4), "Y": (2, 5, 4)}),
], ids=["wide net", "attention"])
def test_gradients_with_their_products_on_mkl_match_finite_differences_and_autograd(every_product_on_mkl, text, wrt,
                                                                                      shapes):
    prog = einmlp.parse(text)
    arrays = random_arrays(prog, shapes, seed=4)
    derivation = prog.grad(wrt)
    assert "_mm(" in executed_source(derivation.plan, fused=True)[0]
    for name in wrt:
        assert_gradient(prog.grad(name), arrays)
    grads = derivation.compile()(**arrays)
    plain = derivation.compile(backend="numpy")(**arrays)
    for name in wrt:
        _close(np.ascontiguousarray(grads[name]), np.ascontiguousarray(plain[name]))
    assert every_product_on_mkl.choice and all(every_product_on_mkl.choice.values())


@needs_mkl
def test_the_articles_gradients_at_a_large_batch_route_their_products(every_product_on_mkl):
    arrays = article_arrays(batch=2000)
    fn = einmlp.load(DERIVATIONS / "article.ein").grad(["W1", "W2"]).compile()
    grads = fn(**arrays)
    plain = einmlp.load(DERIVATIONS / "article.ein").grad(["W1", "W2"]).compile(backend="numpy")(**arrays)
    for name in ("W1", "W2"):
        _close(np.ascontiguousarray(grads[name]), np.ascontiguousarray(plain[name]))
    assert any(every_product_on_mkl.choice.values())


@needs_mkl
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_mkl_gives_numpys_infinities_and_nans_and_leaves_subnormals_alone(monkeypatch, dtype):
    """inf times a zero is nan in both (no BLAS shortcut skips zeros), and MKL sets no flush-to-zero."""
    monkeypatch.setattr(blas, "MKL_FROM", 0)
    rng = np.random.default_rng(6)
    a, b = rng.standard_normal((64, 32)).astype(dtype), rng.standard_normal((32, 48)).astype(dtype)
    a[3, 5], a[7, 2], b[9, 4] = np.inf, np.nan, -np.inf
    b[5, :], a[:, 9] = 0.0, 0.0
    with np.errstate(invalid="ignore"):
        mine, numpys = blas.Products(blas.mkl())._planned(a, b)[1](), a @ b
    assert np.isnan(numpys).sum() > 100
    np.testing.assert_array_equal(np.isnan(mine), np.isnan(numpys))
    np.testing.assert_array_equal(np.isinf(mine) * np.sign(mine), np.isinf(numpys) * np.sign(numpys))
    finite = np.isfinite(numpys)
    np.testing.assert_allclose(mine[finite], numpys[finite], rtol=1e-5 if dtype == np.float32 else 1e-12)
    tiny = np.finfo(dtype).smallest_subnormal * 4
    assert np.array([tiny], dtype)[0] * dtype(0.5) == tiny / 2


def test_an_mkl_already_in_the_process_is_left_to_its_owner(monkeypatch):
    """numpy on MKL (conda's), or a library that loaded MKL: its threading is not einmlp's to make sequential."""
    monkeypatch.setattr(np, "show_config", lambda mode=None: {"Build Dependencies": {"blas": {"name": "mkl-sdl"}}})
    assert blas._loaded_already()
    monkeypatch.setattr(blas, "_mkl", False)
    monkeypatch.setattr(blas, "_products", None)
    assert blas.mkl() is None and blas.products() is None and not blas.available()
