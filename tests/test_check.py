"""Finite-difference checking: it passes right derivatives and catches wrong ones."""

import numpy as np

import einmlp


class Shifted:
    """A derivation whose compiled derivative is off by `shift` (to prove check can fail)."""

    def __init__(self, derivation, shift):
        self.inner, self.shift, self.wrt = derivation, shift, derivation.wrt

    def compile(self, functions=None):
        fn = self.inner.compile(functions)
        return lambda **arrays: fn(**arrays) + self.shift

    def differentiated(self, functions=None):
        return self.inner.differentiated(functions)


def test_entrywise_for_small_and_directions_for_large():
    prog = einmlp.parse("L = tanh(X[i,j] w[j])")
    rng = np.random.default_rng(0)
    small = einmlp.check(prog.grad("w"), {"X": rng.standard_normal((5, 3)), "w": rng.standard_normal(3)})
    assert small.ok and small.mode == "entrywise" and small.compared == 3
    large = einmlp.check(prog.grad("X"), {"X": rng.standard_normal((50, 30)), "w": rng.standard_normal(30)})
    assert large.ok and large.mode == "directions" and large.compared == 6
    assert "ok: max relative error" in str(large)


def test_a_wrong_gradient_fails():
    d = einmlp.parse("L = x[i] x[i]").grad("x")
    arrays = {"x": np.array([1.0, -2.0, 0.5])}
    result = einmlp.check(Shifted(d, 1e-3), arrays)
    assert not result.ok and result.max_rel_error > 1e-5
    assert "FAILED" in str(result) and not bool(result)


def test_check_of_a_hessian_differences_the_gradient():
    prog = einmlp.parse("L = exp(x[i]) x[j] x[j]")
    result = einmlp.check(prog.hessian("x"), {"x": np.array([0.1, -0.4, 0.3])})
    assert result.ok, str(result)


def test_the_raw_error_the_noise_floor_and_the_verdict_are_reported_apart():
    """A right gradient: the raw error is small but not 0, the noise floor is what finite differences allow."""
    prog = einmlp.parse("L = tanh(X[i,j] w[j])")
    rng = np.random.default_rng(1)
    result = einmlp.check(prog.grad("w"), {"X": rng.standard_normal((5, 3)), "w": rng.standard_normal(3)})
    assert result.ok and 0 < result.raw_error < 1e-6 and 0 < result.noise_floor < 1e-6
    assert result.max_rel_error == max(result.raw_error - result.noise_floor, 0.0)
    text = str(result)
    assert text.startswith(f"ok: max relative error {result.raw_error:.3g}, ")
    assert f"noise floor {result.noise_floor:.2g}" in text and "tolerance 1e-06" in text and "3 entries" in text


def test_a_wrong_gradient_reports_its_error_beyond_the_floor():
    d = einmlp.parse("L = x[i] x[i]").grad("x")
    result = einmlp.check(Shifted(d, 1e-3), {"x": np.array([1.0, -2.0, 0.5])})
    assert result.raw_error > result.max_rel_error > 1e-5 and result.noise_floor < 1e-6
    assert result.raw_error - result.noise_floor == result.max_rel_error
    assert str(result).startswith(f"FAILED: max relative error {result.raw_error:.3g}, "
                                  f"{result.max_rel_error:.3g} beyond the finite-difference noise floor")
    html = result._repr_html_()
    assert "FAILED" in html and "noise floor" in html and f"{result.raw_error:.3g}" in html
