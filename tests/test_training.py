"""Training: value_and_grad in one pass, and gradient descent on the article's network."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import ARTICLE_ACTIVATED, SEED000_BIAS, article_arrays, assert_gradient, random_arrays

import einmlp


def teacher_arrays(seed: int = 0) -> dict:
    """The article's sizes (X 10x3, W1 3x4, W2 4x1, Y 10x1), Y made by the same network with other weights.

    The targets are reachable, so a working descent drives the loss towards 0.
    """
    arrays, teacher = article_arrays(seed=seed), article_arrays(seed=seed + 10)
    forward = einmlp.parse(ARTICLE_ACTIVATED).compile(of="Yhat")
    arrays["Y"] = forward(X=arrays["X"], W1=teacher["W1"], W2=teacher["W2"])
    return arrays


# value_and_grad ---------------------------------------------------------------------------

@pytest.mark.parametrize("source, wrt, shapes", [
    (ARTICLE_ACTIVATED, ["W1", "W2"], {"X": (10, 3), "W1": (3, 4), "W2": (4, 1), "Y": (10, 1)}),
    (SEED000_BIAS, ["W1", "c1", "W2", "c2"], {"X": (8, 3), "W1": (3, 5), "c1": (5,), "W2": (5, 2), "c2": (2,),
                                              "T": (8, 2)}),
])
def test_value_and_grad_is_the_forward_value_and_every_gradient(source, wrt, shapes):
    prog = einmlp.parse(source)
    arrays = random_arrays(prog, shapes, seed=3)
    loss, grads = prog.value_and_grad(wrt).compile()(**arrays)
    assert np.ndim(loss) == 0
    np.testing.assert_allclose(loss, prog.compile()(**arrays), rtol=1e-13)
    assert list(grads) == wrt
    for name in wrt:  # each against finite differences and autograd over the oracle
        expected = assert_gradient(prog.grad(name), arrays)
        np.testing.assert_allclose(grads[name], expected, rtol=1e-12, atol=1e-14)


def test_value_and_grad_computes_the_forward_pass_once():
    """The loss is read from the gradients' own plan: each forward intermediate is assigned once."""
    prog = einmlp.parse(ARTICLE_ACTIVATED)
    plan = prog.value_and_grad(["W1", "W2"]).compile().compiled.plan
    assigned = [e.out for e in plan.equations]
    for name in ["A", "B", "C", "Yhat", "Ytilde", "Delta"]:
        assert assigned.count(name) == 1, plan
    gradients_only = prog.grad(["W1", "W2"]).plan
    assert len(plan.equations) <= len(gradients_only.equations) + 2  # the loss's own sum, nothing recomputed


def test_value_and_grad_of_a_single_name_and_bad_names():
    prog = einmlp.parse("L = (w[i] - 1)^2")
    loss, grads = prog.value_and_grad("w").compile()(w=np.zeros(3))
    assert loss == 3.0 and grads["w"].tolist() == [-2.0, -2.0, -2.0]
    with pytest.raises(einmlp.UnknownNameError, match="v"):
        prog.value_and_grad("v")
    with pytest.raises(einmlp.UnknownNameError, match="not a target"):
        prog.value_and_grad("w", of="M")


# train ---------------------------------------------------------------------------------

# (method, learning rate): plain descent at a rate where it is stable on this network
METHODS = [("sgd", 1e-3), ("momentum", 1e-4), ("adam", 1e-2)]


@pytest.mark.parametrize("method, lr", METHODS)
def test_training_the_article_network_reduces_the_loss_a_hundredfold(method, lr):
    prog = einmlp.parse(ARTICLE_ACTIVATED)
    arrays = teacher_arrays()
    before = {k: v.copy() for k, v in arrays.items()}
    fit = einmlp.train(prog, arrays, wrt=["W1", "W2"], lr=lr, steps=1000, method=method)
    assert not fit.diverged and fit.steps == 1000 and len(fit.losses) == 1000
    assert fit.losses[0] == pytest.approx(prog.compile()(**arrays))
    assert fit.loss < fit.losses[0] / 100, (fit.losses[0], fit.loss)  # 7.3 -> 0.0045 (sgd)
    for name, value in arrays.items():  # the caller's arrays are untouched; only W1 and W2 changed
        np.testing.assert_array_equal(value, before[name])
    np.testing.assert_array_equal(fit.arrays["X"], arrays["X"])
    assert not np.array_equal(fit.arrays["W1"], arrays["W1"])
    assert fit.loss == pytest.approx(prog.compile()(**fit.arrays))


def test_one_sgd_step_is_the_derived_gradient_step():
    prog = einmlp.parse(ARTICLE_ACTIVATED)
    arrays = teacher_arrays()
    fit = einmlp.train(prog, arrays, wrt=["W1"], lr=1e-3, steps=1)
    gradient = assert_gradient(prog.grad("W1"), arrays)  # finite differences and the oracle
    np.testing.assert_allclose(fit.arrays["W1"], arrays["W1"] - 1e-3 * gradient, rtol=1e-13)
    np.testing.assert_array_equal(fit.arrays["W2"], arrays["W2"])


def test_the_callback_sees_every_step():
    seen = []
    prog = einmlp.parse("L = (w[i] - 1)^2")
    fit = einmlp.train(prog, {"w": np.zeros(2)}, wrt="w", lr=0.1, steps=5, callback=lambda s, v: seen.append((s, v)))
    assert [s for s, _ in seen] == [0, 1, 2, 3, 4] and [v for _, v in seen] == list(fit.losses)


def test_a_diverging_run_stops_and_says_so():
    prog = einmlp.parse(ARTICLE_ACTIVATED)
    with pytest.warns(einmlp.EinmlpWarning, match="diverged.*smaller lr"):
        fit = einmlp.train(prog, teacher_arrays(), wrt=["W1", "W2"], lr=0.1, steps=100)
    assert fit.diverged and fit.steps < 100 and np.isnan(fit.loss)
    assert "diverged" in repr(fit) and "smaller lr" in fit._repr_html_()


def test_a_loss_that_goes_up_is_a_warning():
    prog = einmlp.parse("L = x[i]^2 / 2")  # the gradient is x: each step multiplies x by 1 - lr
    with pytest.warns(einmlp.EinmlpWarning, match="went up"):
        fit = einmlp.train(prog, {"x": np.ones(2)}, wrt="x", lr=2.5, steps=3)  # |1 - 2.5| > 1
    np.testing.assert_allclose(fit.arrays["x"], (-1.5) ** 3)


@pytest.mark.parametrize("kwargs, word", [
    ({"lr": -1}, "lr"),
    ({"lr": float("nan")}, "lr"),
    ({"steps": 0}, "steps"),
    ({"steps": 2.5}, "steps"),
    ({"method": "rmsprop"}, "method"),
    ({"wrt": ["Q"]}, "Q"),
    ({"wrt": []}, "none"),
    ({"of": "A"}, "scalar"),
    ({"of": "Nope"}, "Nope"),
])
def test_bad_arguments_are_clear_errors(kwargs, word):
    prog = einmlp.parse(ARTICLE_ACTIVATED)
    call = {"wrt": ["W1"], "lr": 1e-3, "steps": 3, **kwargs}
    with pytest.raises(einmlp.EinmlpError, match=word):
        einmlp.train(prog, teacher_arrays(), **call)


def test_the_result_prints_and_plots(tmp_path):
    mpimg = pytest.importorskip("matplotlib.image", reason="matplotlib is not installed (pip install 'einmlp[plot]')")
    prog = einmlp.parse(ARTICLE_ACTIVATED)
    fit = einmlp.train(prog, teacher_arrays(), wrt=["W1", "W2"], lr=1e-3, steps=50)
    assert repr(fit).startswith("<TrainResult Delta: 7.31") and "50 steps of sgd" in repr(fit)
    html = fit._repr_html_()
    assert "<table>" in html and "<svg" in html and "final loss" in html
    fit.plot(tmp_path / "loss.png")
    image = mpimg.imread(tmp_path / "loss.png")
    assert image.shape[:2] == (400, 600) and image.std() > 0  # 6x4 inches at 100 dpi, not blank
    with pytest.raises(einmlp.EinmlpError, match="png"):
        fit.plot(tmp_path / "loss.xyz")


def test_training_float32_stays_float32():
    prog = einmlp.parse(ARTICLE_ACTIVATED)
    arrays = {k: v.astype(np.float32) for k, v in teacher_arrays().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error", einmlp.EinmlpWarning)
        fit = einmlp.train(prog, arrays, wrt=["W1", "W2"], lr=1e-3, steps=20)
    assert fit.arrays["W1"].dtype == np.float32 and fit.loss < fit.losses[0]


@pytest.mark.parametrize("method", ["sgd", "momentum", "adam"])
def test_training_in_each_library_takes_numpys_steps(method):
    """torch tensors train as torch tensors, and backend="numba" fuses: the same losses as numpy, step by step."""
    torch = pytest.importorskip("torch", reason="torch is not installed: training on torch is not tested")
    pytest.importorskip("numba", reason="numba is not installed: fused training is not tested")
    prog = einmlp.parse(ARTICLE_ACTIVATED)
    arrays = teacher_arrays()
    plain = einmlp.train(prog, arrays, wrt=["W1", "W2"], lr=2e-4, steps=30, method=method)
    tensors = {n: torch.tensor(a) for n, a in arrays.items()}
    on_torch = einmlp.train(prog, tensors, wrt=["W1", "W2"], lr=2e-4, steps=30, method=method)
    fused = einmlp.train(prog, arrays, wrt=["W1", "W2"], lr=2e-4, steps=30, method=method, backend="numba")
    assert isinstance(on_torch.arrays["W1"], torch.Tensor) and isinstance(fused.arrays["W1"], np.ndarray)
    assert torch.equal(tensors["W1"], torch.tensor(arrays["W1"]))  # the caller's tensors are untouched
    for fit in (on_torch, fused):
        np.testing.assert_allclose(fit.losses, plain.losses, rtol=1e-10)
        np.testing.assert_allclose(np.asarray(fit.arrays["W2"]), plain.arrays["W2"], rtol=1e-9, atol=1e-12)
