"""The same compiled function on numpy, torch, jax, dask (and cupy where a GPU is): same numbers,
each library's own arrays back, float32 kept, torch autograd and jax.jit working through it.

The numpy results are themselves checked against finite differences and autograd in
test_derivations.py; here every other library must give them to 1e-12 relative.
"""

from __future__ import annotations

import importlib.util
import re

import numpy as np
import pytest
from conftest import DERIVATIONS, article_arrays
from test_derivations import directives

import einmlp


def _library(name: str):
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} is not installed (pip install {name}): its backend is not tested here")
    return importlib.import_module(name)


def _jax():
    jax = _library("jax")
    jax.config.update("jax_enable_x64", True)  # float64, to compare with numpy at 1e-12
    return jax


def _programs():
    for path in sorted(DERIVATIONS.glob("*.ein")):
        yield pytest.param(path, id=path.stem)


def _cases(path):
    prog = einmlp.load(path)
    d = directives(path)
    rng = np.random.default_rng(3)
    arrays = {name: rng.standard_normal(d["shapes"][name]) * 0.5 for name in prog.inputs}
    return prog, prog.grad(d["derive"]), arrays, [prog.hessian(w) for w in d["hessian"]]


def _same(result, expected):
    for name, value in expected.items():
        scale = max(1.0, float(np.max(np.abs(value))))
        assert np.asarray(result[name]).shape == value.shape, name
        np.testing.assert_allclose(np.asarray(result[name]), value, rtol=1e-12, atol=1e-12 * scale, err_msg=name)


TO = {
    "torch": lambda a: importlib.import_module("torch").tensor(a, requires_grad=True),
    "jax": lambda a: importlib.import_module("jax.numpy").asarray(a),
    "dask": lambda a: importlib.import_module("dask.array").from_array(a, chunks=max(1, len(a) // 3) if a.ndim else ()),
}
BACK = {
    "torch": lambda t: t.detach().numpy(),
    "jax": np.asarray,
    "dask": lambda d: d.compute(),
}
TYPES = {"torch": "torch.Tensor", "jax": "jax.Array", "dask": "dask.array.Array"}


@pytest.mark.parametrize("library", ["torch", "jax", "dask"])
@pytest.mark.parametrize("path", list(_programs()))
def test_every_derivation_gives_numpys_numbers_on_each_library(path, library):
    """All gradients (and the Hessians a file asks for) of every derivations/*.ein, on each library's arrays."""
    _jax() if library == "jax" else _library(library)
    prog, grads, arrays, hessians = _cases(path)
    fn = grads.compile()
    expected = fn(**arrays)
    result = fn(**{n: TO[library](a) for n, a in arrays.items()})
    module, _, kind = TYPES[library].rpartition(".")
    array_type = getattr(importlib.import_module(module), kind)
    assert all(isinstance(v, array_type) for v in result.values())
    assert all(str(v.dtype).endswith("float64") for v in result.values())
    _same({n: BACK[library](v) for n, v in result.items()}, expected)
    for h in hessians:
        value = h.compile()(**{n: TO[library](a) for n, a in arrays.items()})
        _same({"H": BACK[library](value)}, {"H": h.compile()(**arrays)})


BATCHED = """
Q[b,t,d] = X[b,t,e] Wq[e,d]
K[b,t,d] = X[b,t,e] Wk[e,d]
E[b,t,u] = exp(Q[b,t,d] K[b,u,d])
P[b,t,u] = E[b,t,u] / sum[v](E[b,t,v])
O[b,t,d] = P[b,t,u] X[b,u,d]
L = (O[b,t,d] W2[d,h] - Y[b,t,h])^2
"""


@pytest.mark.parametrize("library", ["torch", "jax", "dask"])
def test_batched_products_give_numpys_numbers_on_each_library(library):
    """A batch axis in front: X[b,t,e] W[e,d] flattens to one BLAS product (np.reshape), Q K^T is batched."""
    _jax() if library == "jax" else _library(library)
    grads = einmlp.parse(BATCHED).grad(["Wq", "Wk", "W2"])
    assert "np.reshape" in grads.compile().source
    rng = np.random.default_rng(5)
    shapes = {"X": (2, 3, 4), "Wq": (4, 4), "Wk": (4, 4), "W2": (4, 5), "Y": (2, 3, 5)}
    arrays = {n: rng.standard_normal(s) * 0.5 for n, s in shapes.items()}
    fn = grads.compile()
    result = fn(**{n: TO[library](a) for n, a in arrays.items()})
    _same({n: BACK[library](v) for n, v in result.items()}, fn(**arrays))


def test_torch_tensors_that_require_grad_stay_in_torchs_graph():
    """The gradient is a torch expression of the inputs: torch can differentiate through it (a Hessian-vector product)."""
    torch = _library("torch")
    prog = einmlp.load(DERIVATIONS / "article.ein")
    arrays = article_arrays()
    t = {n: torch.tensor(a, requires_grad=True) for n, a in arrays.items()}
    dW1 = prog.grad("W1").compile()(**t)
    assert dW1.requires_grad and dW1.grad_fn is not None
    v = torch.randn(3, 4, dtype=torch.float64)
    (hvp,) = torch.autograd.grad((dW1 * v).sum(), t["W1"])
    expected = np.einsum("mnpq,pq->mn", prog.hessian("W1").compile()(**arrays), v.numpy())
    np.testing.assert_allclose(hvp.numpy(), expected, rtol=1e-10, atol=1e-12)
    # and against torch's own autograd of the forward, computed by einmlp on tensors
    loss = prog.compile()(**t)
    (auto,) = torch.autograd.grad(loss, t["W1"])
    np.testing.assert_allclose(dW1.detach().numpy(), auto.numpy(), rtol=1e-12, atol=1e-12)


def test_a_torch_result_is_its_own_tensor_and_stays_in_the_graph():
    """dL/dx of x.y is y: a clone of it, which torch differentiates through (to the identity)."""
    torch = _library("torch")
    x = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([3.0, 4.0], dtype=torch.float64, requires_grad=True)
    g = einmlp.parse("L = x[i] y[i]").grad("x").compile()(x=x, y=y)
    assert g is not y and g.data_ptr() != y.data_ptr() and g.grad_fn is not None
    (back,) = torch.autograd.grad(g.sum(), y)
    np.testing.assert_array_equal(back.numpy(), [1.0, 1.0])


def test_torch_keeps_float32_and_device_and_takes_numpy_alongside():
    torch = _library("torch")
    prog = einmlp.load(DERIVATIONS / "article.ein")
    arrays = article_arrays()
    fn = prog.grad(["W1", "W2"]).compile()
    mixed = {n: (torch.tensor(a, dtype=torch.float32) if n == "X" else a.astype(np.float32)) for n, a in arrays.items()}
    result = fn(**mixed)
    assert all(isinstance(v, torch.Tensor) and v.dtype == torch.float32 for v in result.values())
    expected = fn(**arrays)  # float32 sums run in another order in each library: compared at float32's precision
    for n, v in result.items():
        np.testing.assert_allclose(v.numpy(), expected[n], rtol=1e-4, atol=1e-5)


def test_jax_is_jitted_and_can_be_jitted_and_differentiated():
    jax = _jax()
    jnp = importlib.import_module("jax.numpy")
    prog = einmlp.load(DERIVATIONS / "article.ein")
    arrays = article_arrays()
    j = {n: jnp.asarray(a) for n, a in arrays.items()}
    fn = prog.grad(["W1", "W2"]).compile(backend="jax")
    expected = prog.grad(["W1", "W2"]).compile()(**arrays)
    _same({n: np.asarray(v) for n, v in fn(**arrays).items()}, expected)  # numpy arrays in, jax computes
    outer = jax.jit(lambda X, W1, W2, Y: fn(X=X, W1=W1, W2=W2, Y=Y))
    _same({n: np.asarray(v) for n, v in outer(**j).items()}, expected)
    # jax's own gradient of einmlp's forward, traced through the generated code
    auto = jax.grad(lambda W1: prog.compile()(X=j["X"], W1=W1, W2=j["W2"], Y=j["Y"]))(j["W1"])
    np.testing.assert_allclose(np.asarray(auto), expected["W1"], rtol=1e-12, atol=1e-12)


def test_jax_contracts_a_batch_over_its_leading_axis_without_transposing_it():
    """`X.T @ Abar` runs on jax as one dot_general over axis 0 of both: XLA's CPU dot copied the
    transpose of a batch-sized X first (12% of the article's gradients at batch 100,000)."""
    jax = _jax()
    jnp = importlib.import_module("jax.numpy")
    from einmlp import backends
    prog = einmlp.load(DERIVATIONS / "article.ein")
    arrays = article_arrays(batch=37)
    fn = prog.grad(["W1", "W2"]).compile()
    jaxpr = str(jax.make_jaxpr(lambda **a: fn(**a))(**{n: jnp.asarray(a) for n, a in arrays.items()}))
    transposed = [line for line in jaxpr.splitlines() if "transpose" in line and re.search(r"\b37\b", line)]
    assert not transposed and "dot_general" in jaxpr
    _same({n: np.asarray(v) for n, v in fn(**{n: jnp.asarray(a) for n, a in arrays.items()}).items()},
          prog.grad(["W1", "W2"]).compile(backend="numpy")(**arrays))
    jax_backend = backends.named("jax")
    assert jax_backend.rewrite("def f(X, A, B):\n    return X.T @ A + A @ B.T\n") == \
        "def f(X, A, B):\n    return _tdot(X, A) + A @ B.T\n"
    rng = np.random.default_rng(0)
    for a, b in [(rng.standard_normal((5, 3)), rng.standard_normal((5, 4))),
                 (rng.standard_normal(5), rng.standard_normal((5, 4))),
                 (rng.standard_normal((5, 3)), rng.standard_normal(5)),
                 (rng.standard_normal((4, 3, 2)), rng.standard_normal((4, 6)))]:
        np.testing.assert_allclose(np.asarray(jax_backend._tdot(jnp.asarray(a), jnp.asarray(b))), a.T @ b,
                                   rtol=1e-13)


def test_jax_float32_has_no_float64_inside():
    """No upcast anywhere in the computation: every array of the traced code is float32.

    (A Python number becomes a float64 scalar that jax converts to float32 where it is used.)
    """
    jax = _jax()
    jnp = importlib.import_module("jax.numpy")
    for path in sorted(DERIVATIONS.glob("*.ein")):
        prog, grads, arrays, _ = _cases(path)
        fn = grads.compile()
        f32 = {n: jnp.asarray(a, dtype=jnp.float32) for n, a in arrays.items()}
        jaxpr = str(jax.make_jaxpr(lambda **a: fn(**a))(**f32))
        wide = [line for line in jaxpr.splitlines() if re.search(r"f64\[\d", line)]
        assert not wide, f"{path.name}: {wide[:3]}"
        assert all(v.dtype == np.float32 for v in fn(**{n: a.astype(np.float32) for n, a in arrays.items()}).values())


def test_dask_stays_lazy_and_runs_chunked_on_a_cluster():
    _library("dask")
    da = importlib.import_module("dask.array")
    distributed = _library("distributed")
    prog = einmlp.load(DERIVATIONS / "article.ein")
    arrays = article_arrays(batch=20_000, seed=1)
    lazy = {n: (da.from_array(a, chunks=(2_000, a.shape[1])) if n in ("X", "Y") else a) for n, a in arrays.items()}
    result = prog.grad(["W1", "W2"]).compile()(**lazy)
    assert all(isinstance(v, da.Array) for v in result.values())
    expected = prog.grad(["W1", "W2"]).compile()(**arrays)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster, \
            distributed.Client(cluster):
        computed = {n: v.compute() for n, v in result.items()}
    _same(computed, expected)


def test_arrays_of_two_libraries_and_unknown_backends_are_refused():
    torch = _library("torch")
    _jax()
    jnp = importlib.import_module("jax.numpy")
    prog = einmlp.load(DERIVATIONS / "article.ein")
    arrays = article_arrays()
    fn = prog.grad("W1").compile()
    with pytest.raises(einmlp.ShapeError, match="different libraries"):
        fn(**{**arrays, "X": torch.tensor(arrays["X"]), "W1": jnp.asarray(arrays["W1"])})
    with pytest.raises(einmlp.EinmlpError, match="unknown backend 'tensorflow'; choose one of numpy, numba, torch, jax, dask, cupy"):
        prog.grad("W1").compile(backend="tensorflow")
    pinned = prog.grad("W1").compile(backend="torch")(**arrays)  # numpy arrays in, torch computes
    assert isinstance(pinned, torch.Tensor)


def test_cupy_on_a_gpu():
    cupy = _library("cupy")
    try:
        cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # installed, but no GPU here
        pytest.skip(f"cupy has no GPU here ({exc})")
    prog = einmlp.load(DERIVATIONS / "article.ein")
    arrays = article_arrays()
    fn = prog.grad(["W1", "W2"]).compile()
    result = fn(**{n: cupy.asarray(a) for n, a in arrays.items()})
    assert all(isinstance(v, cupy.ndarray) for v in result.values())
    _same({n: cupy.asnumpy(v) for n, v in result.items()}, fn(**arrays))


RANDOM_PROGRAMS = 40


@pytest.mark.parametrize("library", ["torch", "jax", "dask", "numba"])
def test_random_programs_give_numpys_numbers_on_each_library(library):
    """Random well-formed programs (tests/programs.py): each library gives the numpy backend's derivative."""
    from test_programs import case

    _jax() if library == "jax" else _library(library)
    convert = TO.get(library, lambda a: a)
    back = BACK.get(library, np.asarray)
    compared = 0
    for seed in range(RANDOM_PROGRAMS):
        generated, arrays, of, wrt, order = case(seed)
        try:
            prog = einmlp.parse(generated.source)
            d = prog.hessian(wrt, of=of) if order == 2 else prog.grad(wrt, of=of)
            expected = d.compile(backend="numpy")(**arrays)
        except einmlp.EinmlpError:
            continue  # refused programs are test_programs.py's business
        if not np.all(np.isfinite(expected)):
            continue
        fn = d.compile(backend="numba") if library == "numba" else d.compile()
        value = back(fn(**{n: convert(a) for n, a in arrays.items()}))
        _same({f"seed {seed}": value}, {f"seed {seed}": np.asarray(expected)})
        compared += 1
    assert compared >= RANDOM_PROGRAMS // 2
