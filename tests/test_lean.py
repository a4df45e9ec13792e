"""Lean plans: no delta arrays for size-1 axes, no einsum where a product or a broadcast does,
each call evaluated once, temporaries freed when dead. Every plan is checked by finite differences."""

from __future__ import annotations

import re

import numpy as np
from conftest import DERIVATIONS, article_arrays, assert_gradient

import einmlp


def statements(plan) -> list[str]:
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
    prog = einmlp.load(DERIVATIONS / "seed000_matrix.ein")
    for w in ("B1", "B2"):
        d = prog.grad(w)
        assert "_equal" not in str(d.plan) and "_full" not in str(d.plan), str(d.plan)
        rng = np.random.default_rng(2)
        arrays = {"X": rng.standard_normal((5, 3)), "W_1": rng.standard_normal((3, 4)), "B_1": rng.standard_normal((1, 4)),
                  "W_2": rng.standard_normal((4, 2)), "B_2": rng.standard_normal((1, 2)), "T": rng.standard_normal((5, 2))}
        arrays = {k.replace("_", ""): v for k, v in arrays.items()}
        assert einmlp.check(d, arrays).ok
