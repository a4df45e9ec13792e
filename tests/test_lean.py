"""Lean plans: no delta arrays for size-1 axes, no einsum where a product or a broadcast does.

Each call is evaluated once and temporaries are freed when dead; every plan is checked by
finite differences.
"""

from __future__ import annotations

import re

import numpy as np
from conftest import DERIVATIONS, article_arrays, assert_gradient

import einmlp


def statements(plan) -> list[str]:
    """The plan's statements as printed."""
    return [str(e) for e in plan.equations]


def test_the_article_plan_has_no_delta_for_its_size_1_axis():
    """dW2 = B.T @ Cbar: the output axis of length 1 is neither a delta array nor a reshape."""
    prog = einmlp.load(DERIVATIONS / "article.ein")
    grads = prog.grad(["W1", "W2"])
    text = str(grads.plan)
    assert "_equal" not in text and "einsum" not in text and "_full" not in text, text
    assert "C = B @ W2" in text and "_grad_W2 = B.T @ Cbar" in text, text
    assert len(grads.plan.equations) <= 10, text
    arrays = article_arrays(batch=7)
    assert einmlp.check(grads, arrays).ok
    for w in ("W1", "W2"):
        assert "_equal" not in str(prog.grad(w).plan)
        assert_gradient(prog.grad(w), arrays)


def test_a_constant_scales_the_product_it_multiplies_not_its_result():
    """Cbar = -3 * (...) in one statement, not a product and then a second pass to scale it."""
    plan = einmlp.load(DERIVATIONS / "article.ein").grad(["W1", "W2"]).plan
    assert not any(re.fullmatch(r"\S+ = \(-?\d+\)\*_t\d+", s.split("    #")[0]) for s in statements(plan)), str(plan)


def test_a_row_of_length_1_gets_its_gradient_without_a_delta():
    """Seed 000's 1 x Z bias rows: their gradients are sums over the batch, not deltas or copies."""
    prog = einmlp.load(DERIVATIONS / "seed000_matrix.ein")
    for w in ("B1", "B2"):
        d = prog.grad(w)
        assert "_equal" not in str(d.plan) and "_full" not in str(d.plan), str(d.plan)
        rng = np.random.default_rng(2)
        shapes = {"X": (5, 3), "W1": (3, 4), "B1": (1, 4), "W2": (4, 2), "B2": (1, 2), "T": (5, 2)}
        arrays = {k: rng.standard_normal(shape) for k, shape in shapes.items()}
        assert einmlp.check(d, arrays).ok


def test_the_logistic_hessian_is_a_scaled_matrix_product():
    """X.T @ diag(s) @ X runs as a product with X scaled by s, never a three-operand einsum.

    And sigmoid(z) is evaluated once.
    """
    prog = einmlp.load(DERIVATIONS / "logistic_regression.ein")
    h = prog.hessian("w")
    text = str(h.plan)
    assert "einsum" not in text and "@" in text, text
    assert text.count("logaddexp") == 1, text
    rng = np.random.default_rng(0)
    arrays = {"X": rng.standard_normal((30, 4)), "w": rng.standard_normal(4), "y": (rng.random(30) > 0.5) * 1.0}
    s = 1 / (1 + np.exp(-arrays["X"] @ arrays["w"]))
    closed = arrays["X"].T @ ((s * (1 - s))[:, None] * arrays["X"])
    np.testing.assert_allclose(h.compile()(**arrays), closed, rtol=1e-12)
    assert_gradient(h, arrays)
