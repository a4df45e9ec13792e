"""einmlp.assert_gradient: the article's own numpy backprop passes, slips in it fail with a useful message."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import ARTICLE_ACTIVATED, article_arrays
from conftest import assert_gradient as check_derived

import einmlp

PROG = einmlp.parse(ARTICLE_ACTIVATED)


# The article's numpy (shared/article.md), with its `Y` written as the `Ytilde` it means.
def gradf1(x):
    return 2 * x


def gradf2(x):
    return 3 * x ** 2


def article_forward(X, W1, W2, Y):
    A = np.dot(X, W1)
    B = A ** 2
    C = np.dot(B, W2)
    Ytilde = Y - C ** 3
    return A, B, C, Ytilde


def article_deltas(X, W1, W2, Y):
    """The article's deltaW1 and deltaW2: the descent directions, -dDelta/dW."""
    A, B, C, Ytilde = article_forward(X, W1, W2, Y)
    deltaW2 = 2 * np.dot(B.T, Ytilde * gradf2(C))
    deltaW1 = 2 * np.dot(X.T, np.dot(Ytilde * gradf2(C), W2.T) * gradf1(A))
    return {"W1": deltaW1, "W2": deltaW2}


def article_deltaW1(X, W1, W2, Y):
    return article_deltas(X, W1, W2, Y)["W1"]


# slips a learner makes, each a row: (hand-written deltaW1, sign, words the message must contain)
def wrong_activation(X, W1, W2, Y):  # f1'(B) where f1'(A) is meant
    A, B, C, Ytilde = article_forward(X, W1, W2, Y)
    return 2 * np.dot(X.T, np.dot(Ytilde * gradf2(C), W2.T) * gradf1(B))


def missing_three(X, W1, W2, Y):  # f2'(x) = x^2 instead of 3 x^2
    A, B, C, Ytilde = article_forward(X, W1, W2, Y)
    return 2 * np.dot(X.T, np.dot(Ytilde * C ** 2, W2.T) * gradf1(A))


def transposed(X, W1, W2, Y):
    return article_deltaW1(X, W1, W2, Y).T


SLIPS = [
    (wrong_activation, -1, ["12 of 12 entries", "max abs error", "max rel error"]),
    (missing_three, -1, ["0.333333 times -dDelta/dW1", "a constant factor"]),
    (article_deltaW1, 1, ["-dDelta/dW1: pass sign=-1"]),
    (transposed, -1, ["shaped (4, 3)", "shaped (3, 4)", "transpose"]),
]


def test_the_derived_gradients_are_right():
    arrays = article_arrays()
    for w in ["W1", "W2"]:
        check_derived(PROG.grad(w), arrays)  # finite differences and the oracle


def test_the_articles_numpy_passes_as_the_negative_gradient():
    arrays = article_arrays()
    einmlp.assert_gradient(article_deltaW1, PROG, "W1", arrays, sign=-1)
    einmlp.assert_gradient(article_deltas, PROG, ["W1", "W2"], arrays, sign=-1)
    einmlp.assert_gradient(lambda **a: (article_deltas(**a)["W1"], article_deltas(**a)["W2"]), PROG,
                           ["W1", "W2"], arrays, sign=-1)  # one array per name, in order
    negated = lambda X, W1, W2, Y: -article_deltaW1(X, W1, W2, Y)  # noqa: E731
    einmlp.assert_gradient(negated, ARTICLE_ACTIVATED, "W1", arrays, of="Delta")  # source text works too


@pytest.mark.parametrize("fn, sign, words", SLIPS, ids=[s[0].__name__ for s in SLIPS])
def test_a_slip_fails_with_the_worst_entries_and_the_derived_form(fn, sign, words):
    with pytest.raises(AssertionError) as info:
        einmlp.assert_gradient(fn, PROG, "W1", article_arrays(), sign=sign)
    message = str(info.value)
    for word in words:
        assert word in message, message
    assert "derived: dDelta/dW1 = -2 * X.T @ (((Ytilde * f2'(C)) @ W2.T) * f1'(A))" in message


def test_the_listed_entries_are_the_worst_with_their_indices():
    arrays = article_arrays()
    with pytest.raises(AssertionError) as info:
        einmlp.assert_gradient(wrong_activation, PROG, "W1", arrays, sign=-1)
    rows = re.findall(r"W1\[(\d),(\d)\]\s+(\S+)\s+(\S+)\s+(\S+)", str(info.value))
    assert len(rows) == 5
    hand, expected = wrong_activation(**arrays), article_deltaW1(**arrays)
    error = np.abs(hand - expected)
    listed = [(int(i), int(j)) for i, j, *_ in rows]
    assert listed[0] == np.unravel_index(np.argmax(error), error.shape)
    assert [error[ij] for ij in listed] == sorted((error[ij] for ij in listed), reverse=True)
    for (i, j), (_, _, h, e, err) in zip(listed, rows):
        assert float(h) == pytest.approx(hand[i, j], rel=1e-7) and float(e) == pytest.approx(expected[i, j], rel=1e-7)
        assert float(err) == pytest.approx(error[i, j], rel=1e-2)


def test_one_wrong_entry_is_the_only_one_listed():
    arrays = article_arrays()

    def one_off(X, W1, W2, Y):
        d = article_deltaW1(X, W1, W2, Y).copy()
        d[2, 3] += 1e-3
        return d
    with pytest.raises(AssertionError, match=r"in 1 of 12 entries") as info:
        einmlp.assert_gradient(one_off, PROG, "W1", arrays, sign=-1)
    assert "W1[2,3]" in str(info.value) and "W1[0,0]" not in str(info.value)
    einmlp.assert_gradient(one_off, PROG, "W1", arrays, sign=-1, atol=2e-3)  # within a looser tolerance


def test_only_the_wrong_gradient_of_several_is_reported():
    arrays = article_arrays()

    def half_right(X, W1, W2, Y):
        return {"W1": wrong_activation(X, W1, W2, Y), "W2": article_deltas(X, W1, W2, Y)["W2"]}
    with pytest.raises(AssertionError) as info:
        einmlp.assert_gradient(half_right, PROG, ["W1", "W2"], arrays, sign=-1)
    assert str(info.value).startswith("W1: ") and "\nW2: " not in str(info.value)


@pytest.mark.parametrize("call, word", [
    (lambda: einmlp.assert_gradient(article_deltaW1, PROG, "W1", article_arrays(), sign=0), "sign"),
    (lambda: einmlp.assert_gradient(lambda X, Z: X, PROG, "W1", article_arrays()), "Z"),
    (lambda: einmlp.assert_gradient(article_deltaW1, PROG, "Q", article_arrays()), "Q"),
    (lambda: einmlp.assert_gradient(lambda **a: {"W1": 0}, PROG, ["W1", "W2"], article_arrays()), "W2"),
    (lambda: einmlp.assert_gradient(lambda **a: "text", PROG, "W1", article_arrays()), "not an array"),
    (lambda: einmlp.assert_gradient(article_deltaW1, 42, "W1", article_arrays()), "Program"),
])
def test_bad_arguments_are_clear_errors(call, word):
    with pytest.raises(einmlp.EinmlpError, match=word):
        call()
