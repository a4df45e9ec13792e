"""Shared fixtures: the article's programs, random arrays, and the gradient oracle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import einmlp

ROOT = Path(__file__).resolve().parents[1]
DERIVATIONS = ROOT / "derivations"

ARTICLE_LINEAR = """\
Yhat[i,0] = X[i,j] W1[j,k] W2[k,0]
Delta     = (Y[i,0] - Yhat[i,0])^2
"""

ARTICLE_ACTIVATED = """\
f1(x) = x^2
f2(x) = x^3
A[i,k]    = X[i,j] W1[j,k]
Yhat[i,0] = f2(f1(A[i,k]) W2[k,0])
Delta     = (Y[i,0] - Yhat[i,0])^2
"""

SEED000_BIAS = """\
H[b,z] = tanh(X[b,d] W1[d,z] + c1[z])
O[b,k] = H[b,z] W2[z,k] + c2[k]
L      = (O[b,k] - T[b,k])^2
"""


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", help="rewrite derivations/ golden files")
    parser.addoption("--programs", type=int, default=300, help="random programs for the generator test")
    parser.addoption("--programs-from", type=int, default=0, help="the first seed of the random programs")
    parser.addoption("--blocked-programs", type=int, default=300,
                     help="random programs run with every separable plan on blocks of rows (from --programs-from)")


@pytest.fixture
def update_golden(request):
    return request.config.getoption("--update-golden")


def article_arrays(batch: int = 10, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"X": rng.standard_normal((batch, 3)), "W1": 0.5 * rng.standard_normal((3, 4)),
            "W2": 0.5 * rng.standard_normal((4, 1)), "Y": rng.standard_normal((batch, 1))}


def flat_results(result) -> dict:
    """A compiled function's results by name: value_and_grad's (value, {name: gradient}) as one dict."""
    if isinstance(result, tuple):
        return {"value": result[0], **result[1]}
    return result if isinstance(result, dict) else {"": result}


def random_arrays(program: einmlp.Program, shapes: dict, seed: int = 0, positive=()) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for name in program.inputs:
        shape = shapes.get(name, ())
        value = rng.standard_normal(shape) * 0.5
        out[name] = np.abs(value) + 0.5 if name in positive else value
    return out


def autodiff(program: einmlp.Program, of: str, wrt: str, arrays: dict, order: int = 1, functions=None,
             twin: str | None = None):
    """The derivative by autograd over the independent oracle (tests/oracle.py), read from the source
    text; `twin`: the same program written by hand in the bracket spelling, for the oracle to read
    where the source uses another spelling (subscripts, Unicode, einsum specs, matrix notation)."""
    from oracle import derivative

    return derivative(twin or program.text, arrays, of, wrt, order, functions)


def assert_gradient(derivation, arrays: dict, *, rtol: float = 1e-7, functions=None, tolerance: float = 1e-6,
                    twin: str | None = None):
    """Finite differences and autograd both agree with the compiled derivative."""
    result = einmlp.check(derivation, arrays, tolerance=tolerance, functions=functions)
    assert result.ok, str(result)
    value = derivation.compile(functions)(**arrays)
    expected = autodiff(derivation.program, derivation.of, derivation.wrt, arrays, derivation.order, functions, twin)
    expected = np.reshape(expected, np.shape(value))
    np.testing.assert_allclose(value, expected, rtol=rtol, atol=1e-10 * max(1.0, np.max(np.abs(expected))))
    return value


class BlockedRuns(list):
    """The blocked runs made while `rows_in_blocks` is on; each takes the next of `steps` rows a block."""

    steps: tuple[int, ...] = (3,)


@pytest.fixture
def rows_in_blocks(monkeypatch):
    """Every plan that separates over an axis runs on blocks of a few rows of it (einmlp/rows.py).

    The thresholds of a real call are set to nothing, so that small test arrays run in blocks
    too; returns the list of blocked runs made, to count them.
    """
    from einmlp import compiled
    made = BlockedRuns()
    planned = compiled._Blocked.planned.__func__

    def counted(cls, plan, backend, args, fn):
        blocked = planned(cls, plan, backend, args, fn)
        if blocked is not None:
            blocked.step = made.steps[len(made) % len(made.steps)]
            made.append(blocked)
        return blocked
    monkeypatch.setattr(compiled, "BLOCK_FROM", 0)
    monkeypatch.setattr(compiled, "BLOCK_ELEMENTS", 0)
    monkeypatch.setattr(compiled, "BLOCK_MIN_ROWS", 1)
    monkeypatch.setattr(compiled.Compiled, "_whole", lambda *args: False)
    monkeypatch.setattr(compiled._Blocked, "planned", classmethod(counted))
    return made
