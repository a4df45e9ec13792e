"""Random programs: einmlp's values and derivatives agree with an independent oracle.

The oracle (tests/oracle.py) reads the same source text with its own parser and its own
implementation of the summation rules of design.md, evaluates it with autograd.numpy, and
autograd differentiates it. Each program's forward value (shape and entries), its gradient
or Hessian, and einmlp.check's finite differences are compared. In CI a few hundred
programs run; on demand, as many as you like:

    python -m pytest tests/test_programs.py --programs 10000 -s [--programs-from 20000]

The `-s` run prints, per chunk, how many programs were checked and the worst relative error.
`-k blocks_of_rows --blocked-programs N` runs N programs with every plan that separates over
its rows run on blocks of one or two of them (einmlp/rows.py).
A failure names its class:
  crash     einmlp raised something that is not an EinmlpError (an internal error)
  refusal   einmlp raised an EinmlpError on a program the oracle reads fine
  value     the forward value differs from the oracle's (shape or entries)
  gradient  the derivative differs from autograd over the oracle
  check     einmlp.check's finite differences disagree with the derivative
  modes     the article's flat chain and the backprop adjoints give different derivatives
  generator the oracle itself rejects the program (a bug in programs.py or oracle.py)
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from oracle import OracleError, derivative, evaluate
from programs import random_program

import einmlp

CHUNK = 50


@dataclass
class Outcome:
    kind: str            # ok, skipped (non-finite values), or a failure class above
    error: float = 0.0   # the worst relative error against the oracle
    message: str = ""


def case(seed: int):
    """The program, arrays, and what to derive for `seed`: (generated, arrays, of, wrt, order)."""
    generated = random_program(seed)
    rng = np.random.default_rng(seed)
    arrays = {name: 0.5 * rng.standard_normal(shape) for name, shape in generated.shapes.items()}
    pick = random.Random(seed)
    wrt = pick.choice(generated.inputs)
    of = "L" if pick.random() < 0.7 else pick.choice(generated.targets)
    scalar_of = np.size(evaluate(generated.source, arrays, of)) == 1
    order = 2 if pick.random() < 0.25 and np.size(arrays[wrt]) <= 12 and scalar_of else 1
    return generated, arrays, of, wrt, order


def _relative(value, expected) -> float:
    scale = max(1.0, float(np.max(np.abs(expected), initial=0)))
    return float(np.max(np.abs(np.asarray(value) - expected), initial=0)) / scale


def check_one(seed: int) -> Outcome:
    """Derive, compile and compare one random program; the outcome names what went wrong."""
    try:
        generated, arrays, of, wrt, order = case(seed)
        expected_value = np.asarray(evaluate(generated.source, arrays, of))
        expected = np.asarray(derivative(generated.source, arrays, of, wrt, order))
    except OracleError as e:
        return Outcome("generator", message=f"the oracle rejects seed {seed}: {e}")
    except Exception as e:  # noqa: BLE001 - autograd itself failing is the reference's failure, reported as such
        return Outcome("generator", message=f"the oracle (autograd) fails on seed {seed}: {type(e).__name__}: {e}")
    if not (np.all(np.isfinite(expected_value)) and np.all(np.isfinite(expected))):
        return Outcome("skipped")
    what = f"d{'2' if order == 2 else ''}{of}/d{wrt}{'2' if order == 2 else ''}"
    stage = "parse"
    try:
        prog = einmlp.parse(generated.source)
        stage = f"value of {of}"
        value = np.asarray(prog.compile(of=of)(**arrays))
        if value.shape != expected_value.shape:
            return Outcome("value", message=f"{of} has shape {value.shape}, the oracle's {expected_value.shape}")
        error = _relative(value, expected_value)
        if not error < 1e-9:
            return Outcome("value", error, f"{of} differs from the oracle's by {error:.3g}")
        stage = what
        d = prog.hessian(wrt, of=of) if order == 2 else prog.grad(wrt, of=of)
        gradient = np.asarray(d.compile()(**arrays))
        if order == 2 and gradient.shape == expected.shape[expected_value.ndim:]:
            expected = expected.reshape(gradient.shape)  # the Hessian of a size-1 `of` such as T[0]
        if gradient.shape != expected.shape:
            return Outcome("gradient", message=f"{what} has shape {gradient.shape}, autograd's {expected.shape}")
        error = max(error, _relative(gradient, expected))
        if not error < 1e-8:
            return Outcome("gradient", error, f"{what} differs from autograd by {error:.3g}")
        stage = f"{what} in the other mode"
        other = _other_mode(prog, d)
        other_error = _relative(np.asarray(other.compile()(**arrays)).reshape(expected.shape), expected)
        if not other_error < 1e-8:
            return Outcome("modes", other_error, f"{what} in {other.mode} mode differs from autograd by "
                                                 f"{other_error:.3g} ({d.mode} mode agrees)")
        stage = f"einmlp.check of {what}"
        fd = einmlp.check(d, arrays, tolerance=1e-4)
    except einmlp.EinmlpError as e:
        return Outcome("refusal", message=f"{stage}: {type(e).__name__}: {e}")
    except Exception as e:  # noqa: BLE001 - any other exception is an internal crash
        return Outcome("crash", message=f"{stage}: {type(e).__name__}: {e}")
    if not fd.ok:
        return Outcome("check", error, str(fd))
    return Outcome("ok", error)


def _other_mode(prog, d):
    """The same derivative the other way: flat chain if `d` reads from adjoints, and back."""
    mode = "flat" if d.mode == "adjoint" else "adjoint"
    if d.base is None:
        return einmlp.Derivation(prog, d.of, d.wrt, mode=mode)
    return einmlp.Derivation(prog, d.of, d.wrt, base=einmlp.Derivation(prog, d.of, d.wrt, mode=mode))


def chunks(config_programs: int, first: int = 0):
    end = first + config_programs
    return [(start, min(start + CHUNK, end)) for start in range(first, end, CHUNK)]


def pytest_generate_tests(metafunc):
    if "chunk" in metafunc.fixturenames:
        found = chunks(metafunc.config.getoption("--programs"), metafunc.config.getoption("--programs-from"))
        metafunc.parametrize("chunk", found, ids=[f"seeds{a}-{b - 1}" for a, b in found])


def test_random_programs(chunk):
    worst, skipped, failures = 0.0, 0, []
    for seed in range(*chunk):
        outcome = check_one(seed)
        skipped += outcome.kind == "skipped"
        worst = max(worst, outcome.error)
        if outcome.kind not in ("ok", "skipped"):
            failures.append(f"seed {seed} [{outcome.kind}] {outcome.message}\n{random_program(seed).source}")
    print(f"\nrandom programs {chunk[0]}..{chunk[1] - 1}: {chunk[1] - chunk[0] - skipped - len(failures)} agree, "
          f"{len(failures)} fail, {skipped} skipped (non-finite), worst relative error {worst:.3g}")
    assert not failures, f"{len(failures)} of {chunk[1] - chunk[0]} programs fail:\n\n" + "\n".join(failures)


def test_random_programs_on_blocks_of_rows(rows_in_blocks, pytestconfig):
    """The oracle, against every separable value and derivative computed one or two rows at a time."""
    rows_in_blocks.steps = (1, 2)  # blocks of one row, or of two and a last one of one or two
    failures, agree = [], 0
    first, count = pytestconfig.getoption("--programs-from"), pytestconfig.getoption("--blocked-programs")
    for seed in range(first, first + count):
        outcome = check_one(seed)
        agree += outcome.kind == "ok"
        if outcome.kind not in ("ok", "skipped"):
            failures.append(f"seed {seed} [{outcome.kind}] {outcome.message}\n{random_program(seed).source}")
    print(f"\nrandom programs on blocks of rows: {agree} agree, {len(failures)} fail, "
          f"{len(rows_in_blocks)} blocked runs")
    assert not failures, "\n".join(failures)
    assert len(rows_in_blocks) >= count // 3  # the check did run blocks


def test_generator_is_deterministic():
    assert random_program(123).source == random_program(123).source


def test_oracle_reads_the_summation_rules():
    """The oracle itself, on the examples design.md gives."""
    y, z = np.array([1.0, 2.0, 3.0]), np.array([0.5, -1.0, 2.0])
    assert evaluate("L = 1 / (y[h] y[h])", {"y": y}) == 1 / 14
    assert evaluate("D = y[h] y[h]\nL = 1/D", {"y": y}) == 1 / 14
    assert evaluate("L = y[nu] + sum[nu](z[nu])", {"y": y, "z": z}) == 6 + 3 * 1.5
    assert evaluate("Z[0] = y[j] y[j]", {"y": y}).shape == (1,)
    assert evaluate("L = -x^2", {"x": np.array(3.0)}) == -9
    assert evaluate("L = x^2^3", {"x": np.array(2.0)}) == 256
    A = np.arange(9.0).reshape(3, 3)
    assert evaluate("L = X[i,i]", {"X": A}) == 12
    np.testing.assert_array_equal(evaluate("d[i] = X[i,i]", {"X": A}), [0, 4, 8])
    np.testing.assert_allclose(evaluate("L = a[h] (y[h] z[h])", {"a": y, "y": y, "z": z}), 6 * 4.5)  # (sum a)(y.z)
