"""Bugs once seen, one row each: the program, its arrays, and the value written out by hand.

Each expected value is plain numpy written from the language's definition (design.md §1),
sharing nothing with einmlp; every gradient is also checked against finite differences.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import einmlp

y = np.array([1.0, 2.0])
a = np.array([0.5, 1.5, 2.0])
u = np.array([1.0, 2.0, 3.0])
z = np.array([1.0, 2.0, 3.0])
Z = np.array([[1.0, 2.0, 3.0], [0.5, 1.0, 4.0]])
c3 = np.array([1.0, -2.0, 0.5])
_w4 = np.array([2.9, 3.1, -3.3])


def _f(x):
    return (x / 3) ** 10 + 1


def _df(x):
    return 10 / 3 * (x / 3) ** 9


# (source, wrt, arrays, forward value, gradient)
CASES = [
    # a left-hand side with literal axes only keeps its size-1 axis
    ("Z[0] = y[j] y[j]\nL = Z[0]^2", "y", {"y": y}, 25.0, 4 * 5.0 * y),
    ("Z[0] = s0\nL = Z[0]^2", "s0", {"s0": np.array(1.5)}, 2.25, np.array(3.0)),
    ("Z[0] = y[j] y[j]\nL = Z[k] v[k]", "y", {"y": y, "v": np.array([3.0])}, 15.0, 2 * 3.0 * y),
    ("Z[0,0] = y[j] y[j]\nL = Z[0,0] Z[0,0]", "y", {"y": y}, 25.0, 4 * 5.0 * y),
    ("L[0] = x[i] y[i]", "y", {"x": np.array([3.0, 4.0]), "y": y}, np.array([11.0]), np.array([[3.0, 4.0]])),
    # parentheses scope a product's sums: 1 / (y.y), not sum 1/y^2
    ("L = 1 / (y[h] y[h])", "y", {"y": y}, 0.2, -2 * y / 25.0),
    ("L = (y[h] y[h])^(-1)", "y", {"y": y}, 0.2, -2 * y / 25.0),
    ("D = y[h] y[h]\nL = 1/D", "y", {"y": y}, 0.2, -2 * y / 25.0),
    ("L = x[i] / (y[h] y[h])", "y", {"x": u[:2], "y": y}, 3.0 / 5.0, -2 * y * 3.0 / 25.0),
    # sympy rebuilding an extent node
    ("L = sqrt((c[q] c[q])^2)", "c", {"c": c3}, 5.25, 2 * c3),
    # a summed index orphaned by a later cancellation keeps its extent
    ("L = log(a[h] * (1 + a[j]^2))", "a",  {"a": a},
     3 * np.sum(np.log(a)) + 3 * np.sum(np.log(1 + a ** 2)), 3 / a + 3 * 2 * a / (1 + a ** 2)),
    ("O[n] = exp(s) u[n]\nL = log(O[l])", "s", {"s": np.array(0.3), "u": u},
     np.sum(0.3 + np.log(u)), np.array(3.0)),
    ("P[b,k] = Z[b,k] / sum[j](Z[b,j])\nL = log(P[b,k])", "Z", {"Z": Z},
     np.sum(np.log(Z / Z.sum(1, keepdims=True))), 1 / Z - 3 / Z.sum(1, keepdims=True)),
    # a temporary the caller already held
    ("H[d] = y[i] x[i] c[d]\nL = H[d] c[d]", "c", {"y": y, "x": np.array([3.0, 4.0]), "c": c3},
     11.0 * c3 @ c3, 2 * 11.0 * c3),
    # a user function with a constant derivative keeps the axes
    ("f(t) = 2*t\nL = f(T[b,k])", "T", {"T": Z}, 2 * Z.sum(), np.full(Z.shape, 2.0)),
    # a bound index is not captured by a free one of the same name
    ("L = y[nu] + sum[nu](z[nu])", "z", {"y": u, "z": z}, 6.0 + 3 * 6.0, np.full(3, 3.0)),
    # a scalar called x is not the parameter of a function definition
    ("A[i] = x*v[i]\nL = A[i] A[i]", "x", {"x": np.array(2.0), "v": y}, 20.0, np.array(2 * 2.0 * 5.0)),
    ("g(x) = x^2\nA[i] = x*g(v[i])\nL = A[i]", "x", {"x": np.array(2.0), "v": y}, 10.0, np.array(5.0)),
    # names that collide with numpy, Python or sympy
    ("L = np[i] np2[i] lambda[i]", "np2", {"np": y, "np2": 2 * y, "lambda": 3 * y},
     6 * np.sum(y ** 3), 3 * y * y),
    ("Add(t) = t^2\nL = Add(x[i])", "x", {"x": y}, 5.0, 2 * y),
    ("KroneckerDelta(t) = t^3\nL = KroneckerDelta(x[i])", "x", {"x": y}, 9.0, 3 * y * y),
    # two sums over different ranges are never added into one
    ("L = x * (y[s] y[s]) - 2 x * v[t] v[t]", "x", {"x": np.array(1.5), "y": a, "v": y},
     1.5 * (a @ a) - 3 * (y @ y), np.array(a @ a - 2 * (y @ y))),
    # constants sympy evaluates to exact or very large numbers
    ("L = x[i] * exp(1)", "x", {"x": y}, 3 * np.e, np.full(2, np.e)),
    ("L = x[i] * tanh(100000000000000000000)", "x", {"x": y}, 3.0, np.ones(2)),
    # a constant user function: an index only its calls read is still summed, whatever else the
    # factor reads (the second was 1/3 of the value; the third's gradient 1/6: found by fuzzing)
    ("q(x) = 0.5\nL = (q(z[k]) - s)^-2", "s", {"z": u, "s": np.array(0.2)}, 3 / 0.09, np.array(3 * 2 / 0.3 ** 3)),
    ("q(x) = 0.5\nL = (q(z[k]) - s)^-1 * (q(z[k]) + s)", "s", {"z": u, "s": np.array(0.2)},
     3 * 0.7 / 0.3, np.array(3 * (1 / 0.3 + 0.7 / 0.09))),
    ("q(x) = 0.5\nY[0] = Z[b,i]\nE[d,n] = Z[d,n] Y[0]\nG = (exp(q(E[d,n])) - Y[0])^-1", "Z", {"Z": Z},
     6 / (np.exp(0.5) - Z.sum()), np.full((2, 3), 6 / (np.exp(0.5) - Z.sum()) ** 2)),
    # ... and its derivative 0 is 0 where its argument is nan (sqrt(log Y) at Y < 1), not 0 * nan
    ("q(x) = relu(1.49)\nD = q(log(Y[a])^(1/2))^(1/2)\nL = -Y[a] * D + Y[a]^0.5", "Y", {"Y": np.array([0.6, 1.3, 0.9])},
     -2.8 * 3 * np.sqrt(1.49) + np.sum(np.sqrt([0.6, 1.3, 0.9])),
     -3 * np.sqrt(1.49) + 0.5 / np.sqrt([0.6, 1.3, 0.9])),
    # log(q(u)) with q(x) = exp(-x^2) is -u^2, and its gradient q'(u)/q(u) is -2 u, not 0/0 where
    # exp(-u^2) underflows (found by fuzzing: the value was finite, the gradient nan)
    ("q(x) = exp(-x^2)\nG = A[j]\nL = log(q(D[t] + G))", "A", {"A": np.full(5, 30.0), "D": np.array([1.0, -2.0])},
     -(151.0 ** 2 + 148.0 ** 2), np.full(5, -2 * (151.0 + 148.0))),
    # a constant raised through composed powers up to the limit (3^10000 inside sympy) is derived
    # a root of degree 10^100 of a number is still worked with exactly (10^300 is refused: test_errors.py)
    ("L = (y[i] y[i])^2^1e-100", "y", {"y": y}, 5.0, 2 * y),
    ("f(x) = (x/3)^10 + 1\nL = f(f(f(f(w[i]))))", "w", {"w": _w4},
     float(np.sum(_f(_f(_f(_f(_w4)))))), _df(_f(_f(_f(_w4)))) * _df(_f(_f(_w4))) * _df(_f(_w4)) * _df(_w4)),
]


@pytest.mark.parametrize("source, wrt, arrays, value, gradient", CASES, ids=[c[0] for c in CASES])
def test_regression(source, wrt, arrays, value, gradient):
    prog = einmlp.parse(source)
    forward = prog.compile()(**arrays)
    assert np.shape(forward) == np.shape(value)
    np.testing.assert_allclose(forward, value, rtol=1e-12)
    d = prog.grad(wrt)
    derived = d.compile()(**arrays)
    assert np.shape(derived) == np.shape(gradient)
    np.testing.assert_allclose(derived, gradient, rtol=1e-12, atol=1e-14)
    assert einmlp.check(d, arrays).ok


def test_several_gradients_do_not_overwrite_an_input_named_like_an_output():
    """gradx is a user name; the gradient with respect to x lives where no user name reaches."""
    x, gx = np.array([1.0, 2.0, 3.0]), np.array([2.0, 3.0, 4.0])
    grads = einmlp.parse("L = x[i] gradx[i] gradx[i]").grad(["x", "gradx"]).compile()(x=x, gradx=gx)
    np.testing.assert_allclose(grads["x"], gx * gx)
    np.testing.assert_allclose(grads["gradx"], 2 * x * gx)


def test_a_comment_never_reaches_executed_code(tmp_path):
    marker = tmp_path / "ran"
    payload = f"__import__('os').system('touch {marker}')"
    for text in [f"L = x[i] x[i] # \r{payload}\rdef _f():\r    #\n",
                 f"L = x[i] x[i] # \x0b{payload}\n", f"L = x[i] x[i] # \x0c{payload}\n",
                 f"L = x[i] x[i] # \u2028{payload}\n"]:
        with pytest.raises(einmlp.ParseError, match="control character"):
            einmlp.parse(text).compile()
    prog = einmlp.parse(f"L = x[i] x[i]  # {payload}\n")
    prog.grad("x").compile()(x=np.ones(2))
    prog.compile()(x=np.ones(2))
    assert payload not in prog.grad("x").compile().source
    assert not marker.exists() and not os.path.exists("/tmp/p")


def test_windows_line_endings_are_line_breaks():
    assert einmlp.parse("A[i] = x[i]\r\nL = A[i] A[i]\r\n").grad("x").index_form == "2*A[m]"


def test_compiled_function_arguments():
    fn = einmlp.parse("A[i,k] = X[i,j] W[j,k]\nL = A[i,k]^2").grad("W").compile()
    X, W = np.ones((2, 3)), np.ones((3, 4))
    np.testing.assert_allclose(fn(X, W), fn(X=X, W=W))
    with pytest.raises(einmlp.UnknownNameError, match="no input Wq.*did you mean W"):
        fn(X=X, Wq=W)
    with pytest.raises(einmlp.ShapeError, match="needs array W"):
        fn(X=X)
    with pytest.raises(einmlp.EinmlpError, match="both by position and by keyword"):
        fn(X, X=X, W=W)


def test_the_gradient_checks_the_shapes_of_the_loss_statement():
    """T of shape (1, 2) must not broadcast silently against the batch of O."""
    prog = einmlp.parse("O[b,k] = H[b,z] W[z,k]\nL = (O[b,k] - T[b,k])^2")
    arrays = {"H": np.ones((4, 3)), "W": np.ones((3, 2)), "T": np.ones((1, 2))}
    with pytest.raises(einmlp.ShapeError, match="index b"):
        prog.grad("W").compile()(**arrays)


def test_a_fixed_index_needs_a_size_one_axis():
    prog = einmlp.parse("L = Y[i,0] Y[i,0]")
    with pytest.raises(einmlp.ShapeError, match="length 1"):
        prog.grad("Y").compile()(Y=np.ones((3, 2)))
    prog = einmlp.parse("L = Y[i,1] Y[i,1]")
    for fn in (prog.compile(), prog.grad("Y").compile()):
        with pytest.raises(einmlp.ShapeError, match="out of range"):
            fn(Y=np.ones((3, 1)))


def test_check_fails_when_the_gradient_is_not_finite():
    with np.errstate(invalid="ignore"):
        result = einmlp.check(einmlp.parse("L = sqrt(x[i])").grad("x"), {"x": -np.ones(2)})
    assert not result.ok and "not finite" in str(result)


def test_an_abstract_function_near_a_built_in_is_pointed_out():
    with pytest.warns(einmlp.EinmlpWarning, match="did you mean sigmoid"):
        prog = einmlp.parse("L = sigmod(x[i])")
    assert prog.warnings and "sigmod" in prog.warnings[0]
    with pytest.raises(einmlp.UnknownNameError, match=r"function sigmod is abstract.*did you mean sigmoid\?"):
        prog.compile()
    with pytest.raises(einmlp.UnknownNameError, match="function sigmod' is abstract"):
        prog.grad("x").compile()
    with pytest.raises(einmlp.UnknownNameError, match="functions g, sigmod are abstract: define them"), \
            pytest.warns(einmlp.EinmlpWarning):
        einmlp.parse("L = sigmod(x[i]) g(x[i])").compile()


def test_an_input_called_self():
    assert einmlp.parse("L = self x").compile()(self=3.0, x=2.0) == 6.0


def test_float32_stays_float32():
    x = np.float32([1.0, 2.0])
    assert einmlp.parse("L = x[i] x[i]").compile()(x=x).dtype == np.float32
    assert einmlp.parse("A[i,k] = X[i,j] W[j,k]\nL = A[i,k]^2").grad(["W"]).compile()(
        X=np.ones((2, 3), np.float32), W=np.ones((3, 4), np.float32))["W"].dtype == np.float32


def test_a_contraction_over_more_than_52_indices_is_refused():
    names = [f"i{k}" for k in range(28)]
    prog = einmlp.parse(f"L = x[{','.join(names)}] x[{','.join(names)}]")
    with pytest.raises(einmlp.IndexNotationError, match="52"):
        prog.hessian("x").compile()(x=np.ones((1,) * 28))


def test_hessian_through_abs_of_a_lifted_sum():
    """Found by fuzzing: sign(C0) in the gradient, differentiated again, once left a sympy Derivative."""
    from conftest import autodiff
    prog = einmlp.parse("X is scalar\nC0[k] = (sum[a](softplus(X) E3[a]))^3 B4[k]\nT2 = softplus(abs(C0[k])) + X B4[k]\n"
                        "Z = -0.8 - X - T2")
    arrays = {"X": np.array(0.3), "E3": np.ones(2), "B4": np.array([0.5, -0.2])}
    hessian = prog.hessian("X")
    np.testing.assert_allclose(hessian.compile()(**arrays), autodiff(prog, "Z", "X", arrays, order=2), rtol=1e-10)
    assert einmlp.check(hessian, arrays).ok


def test_check_accepts_a_derivative_that_is_zero_up_to_rounding():
    """A Hessian that is 0, where central differences of the cancelling gradient give only noise."""
    prog = einmlp.parse("X1 is scalar\nT2 = X1 X1 / (X5[s] X5[s])\nT3[0] = T2 X6[s3,s3]\nL = T3[0] + 0.5 T3[0]^2")
    arrays = {"X1": np.array(1e-8), "X5": np.array([-0.9, -0.2, 0.03]), "X6": np.eye(2)}
    assert einmlp.check(prog.hessian("X5"), arrays, tolerance=1e-4).ok


def test_hessian_through_nested_user_functions():
    """d''(A) is written out as c''(A) = 2 b'(A) + A b''(A): one expression, parenthesised as one."""
    from conftest import autodiff
    prog = einmlp.parse("b(x) = x\nc(x) = x b(x)\nd(x) = c(x)\nL = d(w[i] v[i])")
    arrays = {"w": np.array([1.0, 2.0, 3.0]), "v": np.array([0.5, 1.0, 2.0])}
    np.testing.assert_allclose(prog.hessian("w").compile()(**arrays), autodiff(prog, "L", "w", arrays, order=2))


def test_a_program_without_inputs_compiles():
    assert einmlp.parse("L = f(0)").compile(functions={"f": np.exp})() == 1.0


def _chain(n: int) -> str:
    """A long chain as the fuzzer writes them: functions, biases, X W read again, products by V."""
    functions, extra = ["tanh", "sigmoid", "sin", "", "softplus"], ["0.1", "X[i,k] W[k,j]", "b[j]", "1"]
    lines = ["A0[i,j] = X[i,k] W[k,j]"]
    for s in range(1, n):
        lines.append(f"A{s}[i,j] = A{s - 1}[i,k] V[k,j]" if s % 5 == 4
                     else f"A{s}[i,j] = {functions[s % 5]}(A{s - 1}[i,j]) + {extra[s % 4]}")
    return "\n".join(lines + [f"L = A{n - 1}[i,j]^2"])


def test_gradients_and_hessian_of_a_long_chain():
    """Found by fuzzing (slow): a Hessian backpropagates through every adjoint, which reads V in every layer."""
    from conftest import assert_gradient, random_arrays
    prog = einmlp.parse(_chain(30))
    rng = np.random.default_rng(1)
    arrays = random_arrays(prog, {"X": (2, 3), "W": (3, 2), "V": (2, 2), "b": (2,)}, seed=1)
    arrays["V"] = 0.5 * np.eye(2) + 0.2 * rng.standard_normal((2, 2))  # keeps the chain's values moderate
    for wrt in ("X", "W", "V", "b"):
        assert_gradient(prog.grad(wrt), arrays, rtol=1e-6)
    hessian = prog.hessian("V")
    assert hessian.mode == "adjoint"
    assert_gradient(hessian, arrays, rtol=1e-6, tolerance=1e-5)


def test_a_deep_nest_is_named_level_by_level():
    """Found by fuzzing (slow): tanh nested 40 deep in one statement, its gradient and Hessian."""
    from conftest import assert_gradient
    prog = einmlp.parse("L = " + "tanh(" * 40 + "x[i]" + ")" * 40 + " x[i]")
    x = np.array([0.3, -1.2, 2.0])
    value = x
    for _ in range(40):
        value = np.tanh(value)
    np.testing.assert_allclose(prog.compile()(x=x), np.sum(value * x), rtol=1e-12)
    assert len(prog.intermediates) > 1  # the nest is a chain of statements now
    assert_gradient(prog.grad("x"), {"x": x})
    assert_gradient(prog.hessian("x"), {"x": x}, tolerance=1e-5)


def test_a_chain_of_single_use_adjoints_longer_than_one_fused_product():
    """Adjoints fused into products of at most MAX_FUSED factors: the gradient reads the rest as computed."""
    from conftest import assert_gradient
    lines = ["T1[i] = sin(x[i])"] + [f"T{k}[i] = sin(T{k - 1}[i])" for k in range(2, 31)] + ["L = T30[i] y[i]"]
    prog = einmlp.parse("\n".join(lines))
    arrays = {"x": np.array([0.3, -1.2, 2.0]), "y": np.array([1.0, 2.0, -0.5])}
    assert_gradient(prog.grad("x"), arrays)
    assert_gradient(prog.hessian("x"), arrays, tolerance=1e-5)


def test_a_user_function_nested_deep_is_written_out_where_it_is_called():
    """Found by fuzzing (slow): g(x) = sin(sin(...x)) 60 deep; kept whole, g'' alone took seconds to write out."""
    from conftest import assert_gradient
    prog = einmlp.parse("g(x) = " + "sin(" * 60 + "x" + ")" * 60 + "\nL = g(x[i]) x[i]")
    x = np.array([0.3, -1.2, 2.0])
    assert_gradient(prog.grad("x"), {"x": x})
    assert_gradient(prog.hessian("x"), {"x": x}, tolerance=1e-5)


def test_exp_of_a_constant_sympy_cannot_evaluate_is_not_checked_as_a_float():
    """Found by fuzzing: the range check of exp(c) asked float() of relu(4), which sympy cannot give."""
    prog = einmlp.parse("L = x[i] exp(relu(4))")
    np.testing.assert_allclose(prog.compile()(x=np.array([1.0, 2.0])), 3 * np.exp(4.0))


def test_a_user_function_constant_when_written_out_still_sums_its_own_index():
    """Found by fuzzing: p(x) = x, so p' is 1; the k that only p'(L[k,z] - b[z]) used was no longer summed.

    d/db[m] of sum[k](p(L[k,z] - b[z])) is -N_k delta(m,z) (was -delta(m,z)); c(x) = 5 summed over k is 5 N_k.
    """
    from conftest import assert_gradient
    arrays = {"L": np.arange(6.0).reshape(3, 2), "b": np.array([1.0, 2.0])}
    prog = einmlp.parse("p(x) = x\nA[z] = p(L[k,z] - b[z])\nS = A[z] A[z]")
    np.testing.assert_allclose(prog.grad("b", of="A").compile()(**arrays), -3 * np.eye(2))
    assert_gradient(prog.grad("b"), arrays)
    constant = einmlp.parse("c(x) = 5\nA[z] = c(L[k,z] - b[z])")
    np.testing.assert_allclose(constant.compile()(**arrays), [15.0, 15.0])


NESTED_DOUBLING = """\
f0(x) = x^2 + 1
f1(x) = f0(x) / 2
f2(x) = sin(f1(x))
f3(x) = f2(f2(x))
f4(x) = f3(x) + 1
f5(x) = f4(x) / 2
f6(x) = f5(x)^2
f7(x) = f6(x) + 1
f8(x) = sin(f7(x))
f9(x) = f8(x)^2
f10(x) = f9(x) / 2
f11(x) = f10(x)^2
f12(x) = sin(f11(x))
f13(x) = f12(x) / 2
f14(x) = f13(x)^2
f15(x) = sin(f14(x))
f16(x) = f15(x) / 2
f17(x) = f16(f16(x))
f18(x) = f17(f17(x))
f19(x) = f18(x)^2
f20(x) = f19(x)^2
f21(x) = f20(x)^2
f22(x) = sin(f21(x))
f23(x) = f22(f22(x))
f24(x) = f23(x) + 1
L = f24(w) w
"""


def test_a_hessian_of_doubly_nested_functions_too_big_to_write_out_is_refused():
    """Found by fuzzing (10 s): f24'' written out has about 200000 operations; it is refused before writing."""
    with pytest.raises(einmlp.EinmlpError, match="written out"):
        einmlp.parse(NESTED_DOUBLING).hessian("w").compile()


def test_a_user_function_of_a_constant_is_checked_as_a_constant():
    """Found by fuzzing: g(1) = 0 in `T[k] / g(1)` raised ZeroDivisionError when called."""
    with pytest.raises(einmlp.NumericError, match="divides by zero"):
        einmlp.parse("g(x) = x^3 - x\nH = T[k] / g(1)")
    prog = einmlp.parse("g(x) = x^3 - x\nH = T[k] / g(2)")
    np.testing.assert_allclose(prog.compile()(T=np.array([1.0, 2.0])), 3.0 / 6.0)


def test_a_denominator_is_not_multiplied_out():
    """d/dx of relu(x) + 1/(x - 2) is -1/(x - 2)^2, not -1/(4 + x^2 - 4x), which loses digits near x = 2."""
    d = einmlp.parse("L = sum[i](relu(x[i]) + 1 / (x[i] - 2))").grad("x")
    assert d.index_form == "-1/(-2 + x[m])**2 + step(x[m])"
    x = np.array([2 + 1e-6, 2 - 3e-7])
    np.testing.assert_allclose(d.compile()(x=x), -1 / (x - 2) ** 2 + (x > 0), rtol=1e-12)


def test_a_fixed_index_anywhere_makes_the_axis_length_1_for_every_compiled_function():
    """S[m,d,0] in one statement and S[k,k,b] in another: dH/dS must not accept S with a third axis of 2.

    (Lowering reads a fixed index's axis as length 1; found by the fuzzer, where it gave a
    Jacobian of shape (4, 4, 4, 1) for S of shape (4, 4, 2).)
    """
    prog = einmlp.parse("H[k] = D10[i] S[k,k,b]\nA5 = G[z,t,d]\nW1[0] = A5 S[m,d,0]")
    arrays = {"D10": np.ones(3), "S": np.ones((4, 4, 2)), "G": np.ones((2, 2, 4))}
    with pytest.raises(einmlp.ShapeError, match="axis 2 of S has length 2, but `W1.0. = A5 S.m,d,0.`"):
        prog.grad("S", of="H").compile()(**arrays)
    arrays["S"] = np.ones((4, 4, 1))
    assert prog.grad("S", of="H").compile()(**arrays).shape == (4, 4, 4, 1)


def test_a_page_with_a_very_long_name_is_typeset():
    """A term of no measured width in the line breaker divided by zero (found by the fuzzer)."""
    prog = einmlp.parse("sq(x) = sqrt(1 + x^2)\nO" + "x" * 1200 + "[t] = (00007) - B3[t]\n")
    assert "\\end{document}" in prog.grad("B3").latex(document=True)


def test_a_relu_gated_derivative_is_0_where_relu_is_flat():
    """sqrt(relu(x))' at x < 0 is 0 (relu is flat there), not 0 * inf = nan: where(x > 0, g, 0), as torch and jax do."""
    prog = einmlp.parse("L = sum[i](sqrt(relu(x[i])) + relu(x[i]) * y[i])")
    x, y = np.array([-2.0, -0.5, 0.25, 4.0]), np.array([1.0, 2.0, 3.0, 4.0])
    with np.errstate(all="ignore"):  # the masked-out branch divides by sqrt(0)
        dx = prog.grad("x").compile()(x=x, y=y)
        assert einmlp.check(prog.grad("x"), {"x": x, "y": y}).ok
    np.testing.assert_allclose(dx, [0.0, 0.0, 1 / (2 * np.sqrt(0.25)) + 3.0, 1 / (2 * np.sqrt(4.0)) + 4.0], rtol=1e-12)


def test_the_exponent_derivative_of_a_power_of_0_is_0():
    """d(b^e)/de = b^e log(b) is 0 where b = 0 and e > 0 (b^e is 0 nearby), not 0 * -inf = nan,
    as jax, torch and autograd take it; found by fuzzing as `S10 = 0 ... - S10^(x+x)`."""
    prog = einmlp.parse("B = 0 z\nL = y[i]^(x x) + B^(x + x)")
    y, x = np.array([0.0, 2.0, 0.5]), 0.7
    with np.errstate(all="ignore"):  # log(0) in the value's own terms
        dx = prog.grad("x").compile()(y=y, x=x, z=1.0)
        d2x = prog.hessian("x").compile()(y=y, x=x, z=1.0)
    by_hand = sum(2 * x * b ** (x * x) * np.log(b) for b in (2.0, 0.5))
    by_hand2 = sum(2 * b ** (x * x) * (1 + 2 * x * x * np.log(b)) * np.log(b) for b in (2.0, 0.5))
    np.testing.assert_allclose(dx, by_hand, rtol=1e-12)
    np.testing.assert_allclose(d2x, by_hand2, rtol=1e-12)
    f = lambda x: np.sum(y ** (x * x)) + 0.0 ** (2 * x)  # noqa: E731
    assert abs(dx - (f(x + 1e-6) - f(x - 1e-6)) / 2e-6) < 1e-6


def test_a_fractional_power_inside_a_user_function_is_not_merged_with_its_body():
    """q((a)^-0.5) with q(x) = exp(-x^2): sympy would write exp(-1/a), finite where a < 0 although
    a^-0.5 is not; the value is nan there, as the program says, and agrees with the gradient."""
    prog = einmlp.parse("q(x) = exp(-x^2)\nL = q((c[n] z[l])^-0.5)")
    c, z = np.array([1.5, -2.0]), np.array([0.5, 2.0])
    with np.errstate(all="ignore"):
        value = prog.compile()(c=c, z=z)
        dc = prog.grad("c").compile()(c=c, z=z)
    assert np.isnan(value) and np.isnan(dc[1]) and np.isfinite(dc[0])
    positive = np.array([1.5, 2.0])
    value = prog.compile()(c=positive, z=z)
    np.testing.assert_allclose(value, sum(np.exp(-1 / (ci * zl)) for ci in positive for zl in z), rtol=1e-12)
    dc = prog.grad("c").compile()(c=positive, z=z)
    by_hand = [sum(np.exp(-1 / (ci * zl)) / (ci * ci * zl) for zl in z) for ci in positive]
    np.testing.assert_allclose(dc, by_hand, rtol=1e-12)


SOFTMAX_ATTENTION = """
Q[t,d] = X[t,e] Wq[e,d]
K[t,d] = X[t,e] Wk[e,d]
V[t,d] = X[t,e] Wv[e,d]
S[t,u] = s Q[t,d] K[u,dd]
P[t,u] = exp(S[t,u]) / sum[v](exp(S[t,v]))
O[t,d] = P[t,u] V[u,d]
L      = (O[t,d] - Y[t,d])^2
"""


def _attention_arrays(scale):
    rng = np.random.default_rng(0)
    return dict(X=scale * rng.standard_normal((3, 4)), Wq=rng.standard_normal((4, 5)), Wk=rng.standard_normal((4, 5)),
                Wv=rng.standard_normal((4, 5)), s=1.3, Y=rng.standard_normal((3, 5)))


def test_softmax_logits_in_the_hundreds_keep_value_gradient_and_hessian():
    """Logits up to about 1200: exp(S) alone overflows past 709 and the Hessian's exp(S)^2 / sum^2
    past 354 (it came out finite and wrong by 10^5). The reference is autograd on a softmax
    written with logsumexp, sharing nothing with einmlp."""
    autograd = pytest.importorskip("autograd")
    import autograd.numpy as anp
    from autograd.scipy.special import logsumexp

    arrays = _attention_arrays(9.0)

    def loss(X):
        Q, K, V = X @ arrays["Wq"], X @ arrays["Wk"], X @ arrays["Wv"]
        S = arrays["s"] * anp.sum(Q, axis=1)[:, None] * anp.sum(K, axis=1)[None, :]
        P = anp.exp(S - logsumexp(S, axis=1, keepdims=True))
        return anp.sum((P @ V - arrays["Y"]) ** 2)
    S = arrays["s"] * (arrays["X"] @ arrays["Wq"]).sum(1)[:, None] * (arrays["X"] @ arrays["Wk"]).sum(1)[None, :]
    assert np.abs(S).max() > 1000
    prog = einmlp.parse(SOFTMAX_ATTENTION)
    np.testing.assert_allclose(prog.compile()(**arrays), loss(arrays["X"]), rtol=1e-12)
    np.testing.assert_allclose(prog.grad("X").compile()(**arrays), autograd.grad(loss)(arrays["X"]),
                               rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(prog.hessian("X").compile()(**arrays), autograd.hessian(loss)(arrays["X"]),
                               rtol=1e-7, atol=1e-7)
    assert einmlp.check(prog.grad("X"), arrays).ok and einmlp.check(prog.hessian("X"), arrays).ok


def test_the_logits_and_their_exponential_keep_their_own_values():
    """The shift is invisible: S, exp(S) and their derivatives asked for themselves are not shifted."""
    arrays = _attention_arrays(1.0)
    prog = einmlp.parse(SOFTMAX_ATTENTION)
    S = arrays["s"] * (arrays["X"] @ arrays["Wq"]).sum(1)[:, None] * (arrays["X"] @ arrays["Wk"]).sum(1)[None, :]
    np.testing.assert_allclose(prog.compile(of="S")(**arrays), S, rtol=1e-12)
    through = einmlp.parse("E[t,u] = exp(S[t,u])\nP[t,u] = E[t,u] / sum[v](E[t,v])\nL = P[t,u] Y[t,u]")
    S, Y = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]]), np.array([[1.0, 0.0, 2.0], [3.0, 1.0, 0.0]])
    np.testing.assert_allclose(through.compile(of="E")(S=S, Y=Y), np.exp(S), rtol=1e-12)
    np.testing.assert_allclose(through.grad("S", of="E").compile()(S=S, Y=Y),
                               np.einsum("tu,tm,un->tumn", np.exp(S), np.eye(2), np.eye(3)), rtol=1e-12)
    P = np.exp(S) / np.exp(S).sum(1, keepdims=True)
    np.testing.assert_allclose(through.compile()(S=S, Y=Y), np.sum(P * Y), rtol=1e-12)
    dS = P * (Y - np.sum(P * Y, axis=1, keepdims=True))
    np.testing.assert_allclose(through.grad("S").compile()(S=S + 800.0, Y=Y), dS, rtol=1e-12)
    assert "np.max(" in through.grad("S").compile().source and "np.max(" not in through.compile(of="E").source


def test_the_second_derivative_of_an_abs_of_a_function_of_abs_compiles():
    """The Hessian of abs(log|x|^2 + 1) compiles.

    sign(log|x|^2 + 1)' was left as sympy's unevaluated Derivative (it could not prove the
    argument real) and compiling refused it; values are real, so it is 2 DiracDelta(u) u', taken as 0.
    """
    prog = einmlp.parse("L = abs(log(abs(x))^2 + 1) + abs(x)^3")
    x = 0.7
    np.testing.assert_allclose(prog.hessian("x").compile()(x=x), 2 * (1 - np.log(x)) / x ** 2 + 6 * x, rtol=1e-12)
    assert einmlp.check(prog.hessian("x"), {"x": np.array(x)}).ok


def test_an_input_the_plan_does_not_read_is_still_shape_checked_on_every_new_shape():
    """The logistic Hessian reads X and w only; y, given too, is held to its shape (the loss reads
    it) on the first call and again whenever its shape changes, fast path or not."""
    hessian = einmlp.load(os.path.join(os.path.dirname(__file__), "..", "derivations", "logistic_regression.ein"))
    fn = hessian.hessian("w").compile()
    rng = np.random.default_rng(0)
    X, w = rng.standard_normal((20, 3)), rng.standard_normal(3)
    s = 1 / (1 + np.exp(-X @ w))
    for _ in range(3):  # the second and third calls run from the cache of seen signatures
        np.testing.assert_allclose(fn(X=X, w=w, y=np.ones(20)), X.T @ ((s * (1 - s))[:, None] * X), rtol=1e-12)
    with pytest.raises(einmlp.ShapeError):
        fn(X=X, w=w, y=np.ones(7))
    with pytest.raises(einmlp.UnknownNameError):
        fn(X=X, w=w, y=np.ones(20), yy=np.ones(20))


def test_calls_by_keyword_from_the_cache_still_see_each_new_shape_and_type():
    """Numpy arrays by keyword run from one lookup once their names, shapes and dtypes were seen;
    any other shape, dtype or array type goes through the checks again."""
    fn = einmlp.parse("H[b,z] = tanh(X[b,d] W[d,z])\nL = (H[b,z] - T[b,z])^2").grad(["W"]).compile()
    rng = np.random.default_rng(0)
    X, W, T = rng.standard_normal((5, 3)), rng.standard_normal((3, 2)), rng.standard_normal((5, 2))
    H = np.tanh(X @ W)
    expected = X.T @ (2 * (H - T) * (1 - H * H))
    for _ in range(3):
        np.testing.assert_allclose(fn(X=X, W=W, T=T)["W"], expected, rtol=1e-12)
    with pytest.raises(einmlp.ShapeError):
        fn(X=X, W=W, T=T[:4])
    with pytest.raises(einmlp.ShapeError):
        fn(X=X, W=W, T=T.T.copy())
    single = fn(X=X.astype(np.float32), W=W.astype(np.float32), T=T.astype(np.float32))["W"]
    assert single.dtype == np.float32
    np.testing.assert_allclose(fn(W=W, T=T, X=X)["W"], expected, rtol=1e-12)  # another keyword order
    np.testing.assert_allclose(fn(X=X.tolist(), W=W, T=T)["W"], expected, rtol=1e-12)  # a list: converted


def test_the_last_call_signature_runs_first_and_anything_else_is_checked_again():
    """A repeat of the last call's names, array types, shapes and dtypes goes straight to the
    arithmetic; by position, by keyword, reordered, misshaped or a numpy subclass takes the full path."""
    fn = einmlp.parse("H[b,z] = tanh(X[b,d] W[d,z])\nL = (H[b,z] - T[b,z])^2").grad("W").compile()
    rng = np.random.default_rng(1)
    X, W, T = rng.standard_normal((5, 3)), rng.standard_normal((3, 2)), rng.standard_normal((5, 2))
    H = np.tanh(X @ W)
    expected = X.T @ (2 * (H - T) * (1 - H * H))
    order = fn.plan.inputs
    given = {"X": X, "W": W, "T": T}
    for call in ["keyword", "keyword", "position", "position", "reordered", "keyword", "position"]:
        if call == "position":
            got = fn(*[given[n] for n in order])
        else:
            got = fn(**(given if call == "keyword" else dict(reversed(given.items()))))
        np.testing.assert_allclose(got, expected, rtol=1e-12)
    with pytest.raises(einmlp.ShapeError):
        fn(*[given[n][:4] if n == "T" else given[n] for n in order])
    with pytest.raises(einmlp.ShapeError):
        fn(X=X, W=W)
    with pytest.raises(einmlp.UnknownNameError):
        fn(X=X, W=W, T=T, TT=T)
    fn(X=X, W=W, T=T)
    np.testing.assert_allclose(fn(X=np.asmatrix(X), W=np.asmatrix(W), T=np.asmatrix(T)), expected, rtol=1e-12)
    assert type(fn(X=np.asmatrix(X), W=W, T=T)) is np.ndarray
    fn(X=X, W=W, T=T)
    single = fn(X=X.astype(np.float32), W=W.astype(np.float32), T=T.astype(np.float32))
    assert single.dtype == np.float32


def test_a_numpy_subclass_computes_as_a_plain_array():
    """np.matrix multiplies `*` as matrices: given as they were, A[i,j] B[i,j] of two 2x2 matrices
    summed the matrix product (24, not 12), and H[i,j] = A[i,j] B[i,j] was A @ B."""
    A, B = np.arange(4.0).reshape(2, 2), np.full((2, 2), 2.0)
    assert einmlp.parse("L = A[i,j] B[i,j]").compile()(A=np.asmatrix(A), B=np.asmatrix(B)) == 12.0
    H = einmlp.parse("H[i,j] = A[i,j] B[i,j]").compile()(A=np.asmatrix(A), B=np.asmatrix(B))
    assert type(H) is np.ndarray
    np.testing.assert_array_equal(H, [[0.0, 2.0], [4.0, 6.0]])


def test_complex_arrays_are_refused_not_read_as_real():
    """sympy takes every value real, so abs(x[i])^2 is x[i]^2: given x = [1+1j, 2-1j] it returned 3-2j
    where |x|^2 summed is 7. The language's values are real; complex input is a clear error."""
    prog = einmlp.parse("L = abs(x[i])^2")
    x = np.array([1 + 1j, 2 - 1j])
    for fn in (prog.compile(), prog.grad("x").compile()):
        with pytest.raises(einmlp.ShapeError, match="x is complex"):
            fn(x=x)


def test_no_result_shares_memory_with_an_input_or_another_result():
    """dL/dx of L = x[i] y[i] is y, and was y itself: `g *= lr` on the gradient changed the caller's y.
    A transpose was a view of W, and two gradients that are both z were one array."""
    x, y, W = np.array([1.0, 2.0, 3.0]), np.array([4.0, 5.0, 6.0]), np.arange(6.0).reshape(2, 3)
    cases = [
        (einmlp.parse("L = x[i] y[i]").grad("x").compile(), {"x": x, "y": y}, {"": y}),
        (einmlp.parse("L = x[i] y[i]").grad(["x", "y"]).compile(), {"x": x, "y": y}, {"x": y, "y": x}),
        (einmlp.parse("H[j,i] = W[i,j]").compile(), {"W": W}, {"": W.T}),
        (einmlp.parse("H[i] = x[i]").compile(), {"x": x}, {"": x}),
        (einmlp.parse("L = x[i] z[i] + y[i] z[i]").grad(["x", "y"]).compile(), {"x": x, "y": y, "z": W[0]},
         {"x": W[0], "y": W[0]}),
    ]
    for fn, arrays, expected in cases:
        kept = {n: a.copy() for n, a in arrays.items()}
        got = fn(**arrays)
        results = got if isinstance(got, dict) else {"": got}
        for name, value in results.items():
            np.testing.assert_array_equal(value, expected[name])
            assert not any(np.shares_memory(value, a) for a in arrays.values()), (fn, name)
            assert not any(np.shares_memory(value, other) for k, other in results.items() if k != name), (fn, name)
            value *= -1.0  # what an optimizer may do to a gradient: the inputs stay as they were
        for n, a in arrays.items():
            np.testing.assert_array_equal(a, kept[n])


def test_a_relu_gated_second_derivative_is_0_where_relu_is_flat():
    """relu(x)^y twice: y (y - 1) relu(x)^(y - 2) relu'(x)^2 is 0 at x < 0, not inf * 0 = nan;
    relu'(x)^2 gates as relu'(x) does (found by fuzzing, in a Hessian)."""
    prog = einmlp.parse("L = relu(x[k])^y")
    x, y = np.array([-1.0, 2.0, -0.5]), 1.5
    with np.errstate(all="ignore"):
        h = prog.hessian("x").compile()(x=x, y=y)
    np.testing.assert_allclose(h, np.diag([0.0, y * (y - 1) * 2.0 ** (y - 2), 0.0]), rtol=1e-12)
    assert einmlp.check(prog.hessian("x"), {"x": x, "y": np.array(y)}).ok


def test_a_simplification_never_writes_numbers_beyond_a_float():
    """log(1e-300 - sigmoid(z)): factor_terms would write 1/(1e-300 - s) as 10^300/(1 - 10^300 s),
    whose square, 10^600, is inf as a float, and the Hessian came out nan (found by fuzzing).
    The rewrite is not taken; the Hessian is the one written out by hand, and finite differences'."""
    prog = einmlp.parse("z[b] = X[b,d] w[d]\nL = -(y[b] log(sigmoid(z[b])) + (1 - y[b]) log(1e-300 - sigmoid(z[b])))")
    rng = np.random.default_rng(0)
    arrays = {"X": rng.standard_normal((20, 3)), "w": rng.standard_normal(3), "y": rng.random(20)}
    s = 1 / (1 + np.exp(-(arrays["X"] @ arrays["w"])))
    q, yv = 1e-300 - s, arrays["y"]
    # dL/dz = -(y (1 - s) - (1 - y) s (1 - s) / q); its derivative in z, s' = s (1 - s):
    d1 = s * (1 - s)
    d2 = -(-yv * d1 - (1 - yv) * ((1 - 2 * s) * d1 / q + d1 * d1 / q ** 2))
    expected = arrays["X"].T @ (d2[:, None] * arrays["X"])
    with np.errstate(all="ignore"):
        h = prog.hessian("w").compile()(**arrays)
    np.testing.assert_allclose(h, expected, rtol=1e-9)
    assert einmlp.check(prog.hessian("w"), arrays).ok


def test_printing_a_tower_of_negative_powers_visits_each_level_once(monkeypatch):
    """pow() printed the base and dropped it before printing 1.0/base^n: twice the work at each
    level of ((...)^-2 + 1)^-2, 2^k in all (a fuzzed program of 20 nested functions took 9 s)."""
    from einmlp.printing import Printer
    x = einmlp.parse("L = x").model.definitions["L"].expr
    e = x
    for _ in range(14):
        e = (e + 1) ** -2
    calls = []
    original = Printer.p
    monkeypatch.setattr(Printer, "p", lambda self, expr: calls.append(1) or original(self, expr))
    source = Printer([], lambda i: "1", lambda name: name).p(e)
    assert source.count("x") == 1 and len(calls) < 200


def test_a_definition_that_is_a_number_at_some_indices_is_never_folded_back():
    """L1[n,b,j] = Z[b,n,j] / Z[n,n,j] is the number 1 at b = n: writing L1 back for it replaced
    every 1 in the term, an axis number too, and sympy raised TypeError (found by fuzzing)."""
    prog = einmlp.parse("L1[n,b,j] = Z[b,n,j] / Z[n,n,j]\nP[0,j] = c Z[j,n,n] + L1[j,j,j] - L1[j,j,j]^0.5")
    rng = np.random.default_rng(0)
    arrays = {"Z": rng.uniform(0.5, 1.5, (3, 3, 3)), "c": np.array(2.0)}
    d = prog.grad("Z")
    expected = np.zeros((1, 3, 3, 3, 3))  # dP[0,j]/dZ[p,q,r] = c N_n-sum of delta(p,j) delta(q,n) delta(r,n)
    for j in range(3):
        for n in range(3):
            expected[0, j, j, n, n] += 2.0  # L1[j,j,j] = 1 whatever Z is: no gradient through it
    np.testing.assert_allclose(d.compile()(**arrays), expected, rtol=1e-12)
    assert einmlp.check(d, arrays).ok


def test_a_hessian_whose_elementwise_factor_simplifies_to_a_number():
    """q''/q - (q'/q)^2 with q(x) = exp(-x^2) is the number -2, still laid out over A's axes for the
    product with the Kronecker deltas (found by fuzzing: a float reached the contraction)."""
    prog = einmlp.parse("q(x) = exp(-x^2)\nG = A[l,u,j]\nStr = log(G * q(A[l,u,j])) - A[l,u,j]")
    A = np.random.default_rng(4).random((2, 3, 2)) + 0.5
    n, g = A.size, A.sum()
    expected = -n / g ** 2 * np.ones((2, 3, 2, 2, 3, 2)) - 2 * np.eye(n).reshape(2, 3, 2, 2, 3, 2)
    h = prog.hessian("A")
    np.testing.assert_allclose(h.compile()(A=A), expected, rtol=1e-12)
    assert einmlp.check(h, {"A": A}).ok


ATTENTION_1E300 = """Q[t,d]  = X[t,e] Wq[e,d]
K[t,d]  = X[t,e] Wk[e,d]
V[t,d]  = X[t,e] Wv[e,d]
S[t,u]  = s Q[t,d]1e300 K[u,d]
P[t,u]  = exp(S[t,u]) / sum[v](exp(S[t,v]))
O[t,d]  = P[t,u] V[u,d]
L       = (O[t,d] - Y[t,d])^2"""


def test_a_saturated_softmax_has_no_gradient_through_its_logits():
    """Found by fuzzing: logits of 1e300 saturate the softmax, and dL/dWq is 0 (finite differences say
    so, and the exact value is below 1e-1000). Written out flat, the quotient rule was a difference of
    two products of 1e300 that cancel: -6.1e287 from their rounding. A chain through a softmax read
    other than by its log derives by adjoints, where Sbar = P (Pbar - sum P Pbar) is exactly 0."""
    prog = einmlp.parse(ATTENTION_1E300)
    rng = np.random.default_rng(7)
    arrays = {"X": rng.standard_normal((4, 5)), "Wq": rng.standard_normal((5, 2)), "Wk": rng.standard_normal((5, 2)),
              "Wv": rng.standard_normal((5, 3)), "s": 1.1, "Y": rng.standard_normal((4, 3))}
    d = prog.grad("Wq")
    assert d.mode == "adjoint"
    np.testing.assert_array_equal(d.compile()(**arrays), np.zeros((5, 2)))
    np.testing.assert_array_equal(prog.grad(["Wq", "Wk"]).compile()(**arrays)["Wk"], np.zeros((5, 2)))
    assert prog.grad("Wv").mode == "flat"  # V is read linearly: no quotient on its chain
    assert einmlp.check(d, arrays).ok
    moderate = dict(arrays, s=1e-300)  # logits of about 1: the same derivative, checked against finite differences
    assert einmlp.check(d, moderate).ok


def test_a_softmax_read_by_its_log_keeps_the_flat_textbook_form():
    prog = einmlp.load(os.path.join(os.path.dirname(__file__), "..", "derivations", "softmax_classifier.ein"))
    d = prog.grad("W")
    assert d.mode == "flat" and d.matrix_form == "X.T @ diag(T.sum(axis=1)) @ P - X.T @ T"


def test_a_scalar_normalisation_read_other_than_by_its_log_derives_by_adjoints():
    """The softmax rule finds a normalisation into a scalar too (a real symbol, not an Indexed entry)."""
    prog = einmlp.parse("N = x / sum[i](y[i]^2)\nL = N * c")
    arrays = {"x": np.array(1.3), "y": np.array([0.5, -1.5, 2.0]), "c": np.array(0.7)}
    d = prog.grad("y")
    assert d.mode == "adjoint"
    np.testing.assert_allclose(d.compile()(**arrays), -2 * 0.7 * 1.3 * arrays["y"] / 6.5 ** 2, rtol=1e-12)
    assert einmlp.check(d, arrays).ok
    assert einmlp.parse("N = x / sum[i](y[i]^2)\nL = log(N) * c").grad("y").mode == "flat"


def test_a_power_with_a_varying_exponent_of_a_zero_base_has_the_power_rules_derivative():
    """Fuzz seed 218 (input 58,286): d(b^n)/db came out as sympy's n b^n / b, 0 / 0 = nan at b = 0.

    With c = 0^log(x) = 0 (x > 1) the value (c sum E)^(2x) is 0 for every E, and so is its
    derivative n b^(n-1) c with n = 2x > 1; finite differences said 0, einmlp nan.
    """
    x, E = np.array(1.7), np.array([0.3, -1.2, 2.0])
    for source in ["X4 = (sum[d](((0e0)^(log(x))) E4[d]))**(x + x)",
                   "X1[nu,z] = (numpy[k]) * B2[nu,z]\nX4 = (sum[d](((0e0)^(log(x))) E4[d]))**(x + x)"]:
        prog = einmlp.parse(source)
        arrays = {"x": x, "E4": E, **({"numpy": np.ones(2), "B2": np.ones((2, 2))} if "B2" in source else {})}
        for derivation in (prog.grad("E4", of="X4"), prog.grad(["E4"], of="X4")):
            grad = derivation.compile()(**arrays)
            np.testing.assert_array_equal(grad if isinstance(grad, np.ndarray) else grad["E4"], np.zeros(3))
        assert einmlp.check(prog.grad("E4", of="X4"), arrays).ok
    # where the base is not 0 the joined power is the same derivative: 2x b^(2x-1) c, by hand
    prog = einmlp.parse("X4 = (sum[d](c E4[d]))^(x + x)")
    c = np.array(0.4)
    b = float(c * E.sum())
    by_hand = np.full(3, 2 * x * b ** (2 * x - 1) * c)
    np.testing.assert_allclose(prog.grad("E4", of="X4").compile()(x=x, c=c, E4=E), by_hand, rtol=1e-13)
    assert einmlp.check(prog.grad("E4", of="X4"), {"x": x, "c": c, "E4": E}).ok


@pytest.mark.parametrize("literal", ["0.5", ".5", "1.", "000012.50", "2.5E+3", "1e-300", "0.0001e-300", "7e299",
                                     "0." + "0" * 330 + "3", "123456789012345678901234567890.1234567890"])
def test_number_literals_keep_their_exact_values(literal):
    """Literals are read digit by digit (a literal of 8,000 zeros no longer reaches Python's int parser)."""
    from fractions import Fraction

    from einmlp.parse import parse_syntax
    value = parse_syntax(f"L = {literal} x[i]").statements[0].expr.left.value
    assert value == Fraction(literal)
