"""A bounded run of the grammar-aware fuzzer (tests/fuzz.py): nothing but clean errors.

Every input, generated from the grammar, mutated from derivations/*.ein or hand-picked,
must either work (with gradients that agree with finite differences and values shaped
like their left-hand sides) or raise an `einmlp.EinmlpError`: no other exception, no
runaway, no user text reaching exec. For the long run, with the 5 s limit per input:

    python tests/fuzz.py --count 100000 --seed 0 --report out.json

In CI a runaway is an input past 10 s: CI shares its machine, and the slowest honest inputs
(chains of 60-120 statements with a Hessian, derived, checked and displayed several ways)
take 2-3 s alone and more on a busy machine.
"""

from __future__ import annotations

import signal

import fuzz
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import einmlp

BUDGET_S = 70  # wall-clock seconds for the campaign (fixed inputs first, then generated ones)
CI_LIMIT_S = 10.0  # per input; the on-demand run uses 5 s


def _describe(report: dict) -> str:
    lines = [f"{report['inputs']} inputs in {report['seconds']} s: {report['counts']}"]
    for key, b in sorted(report["buckets"].items(), key=lambda kv: -kv[1]["count"]):
        ex = b["examples"][0]
        detail = ex["detail"] or {}
        lines.append(f"[{b['count']}] {key}\n    input:   {ex['text'][:300]!r}\n"
                     f"    message: {str(detail.get('message', ''))[:300]}")
    return "\n".join(lines)


def test_fuzz_campaign_finds_nothing():
    report = fuzz.campaign(count=100_000, seed=0, time_limit=CI_LIMIT_S, budget=BUDGET_S)
    assert report["inputs"] >= len(fuzz.FIXED_INPUTS)
    bad = {c: report["counts"][c] for c in fuzz.BAD if report["counts"][c]}
    assert not bad, _describe(report)


def test_code_in_comments_never_runs(tmp_path):
    """The carriage-return comment payload must not run (checked in a worker, by a marker file)."""
    runner = fuzz.Runner(time_limit=5.0, marker_dir=str(tmp_path))
    try:
        results = [runner.run(text, 0) for text in fuzz.FIXED_INPUTS[:3]]
    finally:
        runner.stop()
    assert [r["category"] for r in results if r["category"] == "CODE-EXEC"] == []


# -- token soup: hypothesis shrinks a failure to a short list of tokens -------------------------
TOKENS = ["x", "y", "W", "L", "A", "f", "i", "j", "k", "0", "1", "2", "0.5", "1e400", "9", "np", "np_", "oe",
          "lambda", "sum", "exp", "log", "sqrt", "relu", "tanh", "sigmoid", "[", "]", "(", ")", ",", "=", "+", "-",
          "*", "/", "^", "**", " ", "\n", ";", "#", "\r", "\t", "\x0b", "\x0c", "\x00", "\u2028", "μ", "_", "."]
TEMPLATES = ["f(x) = x^2\n", "A[i,j] = X[i,k] W[k,j]\n", "L = ", "y[i] = ", "x[i]", "W[i,j]", "sum[j](", "f("]


class _Timeout(BaseException):
    pass


@settings(derandomize=True, max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.sampled_from(TOKENS + TEMPLATES), max_size=30).map("".join))
def test_token_soup_parses_or_fails_cleanly(text):
    """parse, then every gradient: a Program and Derivations, or an EinmlpError, within 5 s."""

    def on_alarm(signum, frame):
        raise _Timeout()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, 5.0)
    try:
        prog = einmlp.parse(text)
        for name in prog.inputs[:3]:
            try:
                prog.grad(name)
            except einmlp.EinmlpError:
                pass
    except einmlp.EinmlpError:
        pass
    except _Timeout:
        pytest.fail(f"HANG: {text!r} ran past 5 s")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_finite_differences_fooled_by_rounding_in_the_value_are_not_a_wrong_gradient():
    """Found by fuzzing: log(1 - sigmoid(25)) rounds, so small steps give a slope 1-2% off the exact gradient."""
    import random

    import numpy as np
    prog = einmlp.parse("L = -(y[b] log(sigmoid(z[b])) + (1 - y[b]) log(1 - sigmoid(z[b])))")
    arrays = {"z": np.array([24.81]), "y": np.array([0.3])}
    grad = prog.grad("z").compile()(**arrays)
    assert fuzz._fd_compare(prog.compile(), grad, arrays, "z", random.Random(0), "dL/dz") == "checked"
    with pytest.raises(fuzz._Wrong):  # a gradient 1% off is still caught
        fuzz._fd_compare(prog.compile(), 1.01 * grad, arrays, "z", random.Random(0), "dL/dz")


def test_derivatives_of_values_that_overflow_or_are_noise_are_not_compared():
    """Found by fuzzing: G C / sqrt(sum C^1000) is 0 where C^1000 overflows (its true slope is not),
    softplus(-exp(0^x + h)) is 0 for every h where 0^x is inf (its chain rule is 0 * inf),
    and sin of a polynomial near 1e47 is float noise (einmlp, autograd and finite differences
    all disagree); neither is a wrong gradient, and neither is compared."""
    import random

    import numpy as np
    prog = einmlp.parse("Z[t] = g[t] C[t] / sqrt(sum[e](C[e]^1000))")
    arrays = {"g": np.array([1.5, 2.0]), "C": np.array([3.0, 0.5])}
    with np.errstate(all="ignore"):
        grad = prog.grad("C").compile()(**arrays)
        assert fuzz._fd_compare(prog.compile(), grad, arrays, "C", random.Random(0), "dZ/dC") == "overflow"
    prog = einmlp.parse("O = 0^x + h\nL = softplus(-exp(O))")  # fuzz input 19,287 of seed 200: 0^-0.7 is inf
    arrays = {"x": np.array(-0.7), "h": np.array(0.3)}
    with np.errstate(all="ignore"):
        grad = prog.grad("h").compile()(**arrays)  # nan, as jax.grad and torch give: sigmoid(-inf) * -inf
        assert np.isnan(grad) and prog.compile()(**arrays) == 0.0
        assert fuzz._fd_compare(prog.compile(), grad, arrays, "h", random.Random(0), "dL/dh") == "overflow"
    prog = einmlp.parse("f(x) = x^2 + 1\ng(x) = f(f(f(f(f(f(f(x)))))))\nL = sin(g(x))")  # sin of about 4.5e38
    arrays = {"x": np.array(1.7)}
    grad = prog.grad("x").compile()(**arrays)
    assert fuzz._fd_compare(prog.compile(), grad, arrays, "x", random.Random(0), "dL/dx") == "ill-conditioned"
    prog = einmlp.parse("L = sin(x) * 1e6")  # steep but smooth: compared
    grad = prog.grad("x").compile()(x=np.array(0.3))
    assert fuzz._fd_compare(prog.compile(), grad, {"x": np.array(0.3)}, "x", random.Random(0), "dL/dx") == "checked"


def test_a_derivative_that_floats_cannot_tell_is_ill_conditioned_not_wrong():
    """Found by fuzzing (seed 213): sin(f14(u)) with f14(u) ~ 1e50 under two more sines is 2 to
    twelve digits, flat to finite differences, with a derivative of +1.2e45 (mpmath, 400 digits)
    that einmlp gives as -1.9e44 and autograd as -8.2e44: the chain rule's cos(f14(u)) is noise
    in floats. It changes completely when u moves by 1e-12 of itself; a wrong but steady
    derivative does not, and is still caught."""
    import random

    import numpy as np
    source = "\n".join(["f0(x) = x^2 + 1", "f1(x) = f0(x) + 1", "f2(x) = f1(x)^2", "f3(x) = f2(x)^2",
                        "f4(x) = f3(f3(x))", "f5(x) = f4(x)^2", "f6(x) = x f5(x)", "f7(x) = x f6(x)",
                        "f8(x) = sin(f7(x))", "f9(x) = x f8(x)", "f10(x) = f9(x) / 2", "f11(x) = x f10(x)",
                        "f12(x) = f11(x) / 2", "f13(x) = f12(x)^2", "f14(x) = f13(x) / 2", "f15(x) = sin(f14(x))",
                        "f16(x) = f15(f15(x))", "f17(x) = f16(x)^2", "f18(x) = f17(x) + 1", "f19(x) = f18(x) + 1",
                        "L = f19(w[i] x[i])"])
    prog = einmlp.parse(source)
    arrays = {"w": np.array([0.9701678, 0.59348711]), "x": np.array([0.98859821, 0.68844913])}
    fn = prog.grad("x").compile()
    grad = fn(**arrays)
    with pytest.raises(fuzz._Wrong):  # without the derivative's own function, it would count as wrong
        fuzz._fd_compare(prog.compile(), grad, arrays, "x", random.Random(0), "dL/dx")
    assert fuzz._fd_compare(prog.compile(), grad, arrays, "x", random.Random(0), "dL/dx",
                            derivative_fn=fn) == "ill-conditioned"
    steady = einmlp.parse("L = sin(w[i] x[i])")
    fn = steady.grad("x").compile()
    with pytest.raises(fuzz._Wrong):  # steady and 1% off: wrong
        fuzz._fd_compare(steady.compile(), 1.01 * fn(**arrays), arrays, "x", random.Random(0), "dL/dx",
                         derivative_fn=lambda **a: 1.01 * fn(**a))


def test_a_nan_derivative_is_wrong_unless_independent_autodiff_gives_nan_too():
    """Found by fuzzing: sqrt(Y + S) with S = -Y is 0 for every Q, yet its chain rule is
    inf - inf = nan in autograd (over the oracle) and jax as in einmlp: `singular`, not compared.
    A nan where autograd is finite is still wrong."""
    import random

    import numpy as np
    import oracle
    source = "Y = c * Q[b]\nS = -Y\nV[n] = Q[n] Y - sum[u](((Y + S)^0.5) E[u])"
    prog = einmlp.parse(source)
    arrays = {"c": np.array(0.7), "Q": np.array([0.3, -1.2, 0.8]), "E": np.array([0.5, 2.0])}
    with np.errstate(all="ignore"):
        grad = prog.grad("Q").compile()(**arrays)
        assert np.all(np.isnan(grad))
        autodiff = lambda: oracle.derivative(source, arrays, "V", "Q")  # noqa: E731
        assert fuzz._fd_compare(prog.compile(), grad, arrays, "Q", random.Random(0), "dV/dQ", (3,), autodiff) \
            == "singular"
        prog, arrays = einmlp.parse("V[n] = Q[n] c"), {"c": arrays["c"], "Q": arrays["Q"]}
        nan = np.full((3, 3), np.nan)
        with pytest.raises(fuzz._Wrong):  # autograd is finite here
            fuzz._fd_compare(prog.compile(), nan, arrays, "Q", random.Random(0), "dV/dQ", (3,),
                             lambda: oracle.derivative("V[n] = Q[n] c", arrays, "V", "Q"))


def test_a_nan_derivative_of_a_value_that_is_not_real_in_exact_arithmetic_is_not_wrong():
    """Found by fuzzing (seed 206, input 6,992): log(s^1e-300)^1e-300 with s = sigmoid(z) < 1 is
    a negative number to a non-integer power, so not real. In floats s^1e-300 rounds to 1 and
    the value is 0^1e-300 = 0, and so is autograd's derivative; einmlp's dL/dy, the same power
    with the logarithm of a power expanded, is nan. At 700 digits the value is complex: `singular`.
    A nan where the exact value is real is still wrong."""
    import random

    import numpy as np
    import oracle
    source = "z[b] = X[b,d] w[d]\nL = -(y[b] log(sigmoid(z[b])^1e-300)^1e-300 + (1 - y[b]) log(1 - sigmoid(z[b])))"
    rng = np.random.default_rng(0)
    arrays = {"X": rng.standard_normal((6, 3)), "w": rng.standard_normal(3), "y": rng.standard_normal(6)}
    prog = einmlp.parse(source)
    with np.errstate(all="ignore"):
        grad = prog.grad("y").compile()(**arrays)
        assert np.all(np.isnan(grad)) and np.isfinite(prog.compile()(**arrays))
        assert oracle.undefined_entries(source, arrays, "L")
        assert fuzz._fd_compare(prog.compile(), grad, arrays, "y", random.Random(0), "dL/dy", (),
                                lambda: oracle.derivative(source, arrays, "L", "y"),
                                lambda: oracle.undefined_entries(source, arrays, "L")) == "singular"
        real, arrays = "L = y[b] y[b]", {"y": arrays["y"]}
        assert not oracle.undefined_entries(real, arrays, "L")
        with pytest.raises(fuzz._Wrong):
            fuzz._fd_compare(einmlp.parse(real).compile(), np.full(6, np.nan), arrays, "y", random.Random(0),
                             "dL/dy", (), lambda: oracle.derivative(real, arrays, "L", "y"),
                             lambda: oracle.undefined_entries(real, arrays, "L"))


def test_a_hessian_is_not_compared_where_the_value_is_nan():
    """Found by fuzzing: abs(relu(-sqrt(K/P))) is nan where K/P < 0; its gradient is 0 there
    (relu' gates it), so the Hessian was compared with finite differences of that 0."""
    text = "oo[j] = relu(-(K10[j] / P11[j,j])**0.5)\nD7[mu] = (V[mu,mu,mu]-oo[mu])^0\ninf = abs(oo[j])\n"
    import numpy as np
    with np.errstate(all="ignore"):  # sqrt of negatives, as the fuzz worker runs it
        result = fuzz.evaluate(text, 203035131)  # input 34,522 of seed 203
    assert result["category"] != "WRONG" and result["verified"].get("fd-hessian:nonfinite")


def test_an_input_over_the_time_limit_is_run_once_more_before_it_counts_as_a_hang():
    """A loaded machine stretches CPU time too (seed 209, input 1,947: 3.2 s alone, over 5 s beside
    a benchmark), so a HANG counts only if a fresh worker runs over the limit again."""
    class Scripted:  # the worker's answers, in order
        def __init__(self, answers):
            self.answers = list(answers)

        def run(self, text, seed):
            return {"category": self.answers.pop(0), "findings": [], "detail": {}}

        def stop(self):
            pass
    once = fuzz.campaign(1, fixed=False, runner=Scripted(["HANG", "OK"]))
    assert once["counts"]["HANG"] == 0 and once["counts"]["OK"] == 1 and once["over_the_limit_once_only"] == 1
    twice = fuzz.campaign(1, fixed=False, runner=Scripted(["HANG", "HANG"]))
    assert twice["counts"]["HANG"] == 1 and twice["over_the_limit_once_only"] == 0


def test_a_derivative_of_an_input_absorbed_by_a_large_constant_is_absorbed_not_wrong():
    """Found by fuzzing (seed 216, input 6,244): cos(E - 1e300) is one float for every E near 1 (E is
    below the last digit of 1e300), so finite differences say 0, while the chain rule gives
    -sin(E - 1e300) = -0.8179 in einmlp and in autograd over the oracle alike: `absorbed`. A value
    that is flat where einmlp's derivative is not, and autograd's is 0 (or missing), is still wrong."""
    import random

    import numpy as np
    import oracle
    source = "H7[mu] = (cos(E - 1e300)) - B2[mu]"
    prog = einmlp.parse(source)
    arrays = {"E": np.array(0.93), "B2": np.array([0.4, -1.1])}
    grad = prog.grad("E").compile()(**arrays)
    assert np.all(grad != 0) and np.all(grad == -np.sin(np.float64(0.93) - 1e300))
    autodiff = lambda: oracle.derivative(source, arrays, "H7", "E")  # noqa: E731
    assert fuzz._fd_compare(prog.compile(), grad, arrays, "E", random.Random(0), "dH7/dE", (2,), autodiff) \
        == "absorbed"
    with pytest.raises(fuzz._Wrong):  # without the reference it cannot be told from a wrong derivative
        fuzz._fd_compare(prog.compile(), grad, arrays, "E", random.Random(0), "dH7/dE", (2,))
    flat = einmlp.parse("H7[mu] = relu(E - 2) - B2[mu]")  # flat in exact arithmetic too: autograd says 0
    with pytest.raises(fuzz._Wrong):
        fuzz._fd_compare(flat.compile(), np.full(2, 0.5), arrays, "E", random.Random(0), "dH7/dE", (2,),
                         lambda: oracle.derivative("H7[mu] = relu(E - 2) - B2[mu]", arrays, "H7", "E"))
