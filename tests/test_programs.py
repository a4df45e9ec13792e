"""Random programs: every derived gradient agrees with autograd and finite differences.

In CI a few hundred programs run; on demand, as many as you like:

    python -m pytest tests/test_programs.py --programs 10000 -s

The `-s` run prints how many programs were checked and the worst relative error.
"""

from __future__ import annotations

import random

import numpy as np
from conftest import autodiff
from programs import random_program

import einmlp

CHUNK = 50


def check_one(seed: int) -> float | None:
    """Derive, compile and compare one random program; returns the worst relative error.

    A program whose value overflows (a random polynomial of a polynomial can) is skipped:
    there is nothing finite to compare. None says so.
    """
    generated = random_program(seed)
    prog = einmlp.parse(generated.source)
    rng = np.random.default_rng(seed)
    arrays = {name: 0.5 * rng.standard_normal(generated.shapes.get(name, ())) for name in prog.inputs}
    pick = random.Random(seed)
    wrt = pick.choice(prog.inputs)
    of = "L" if pick.random() < 0.7 else pick.choice(generated.targets)
    order = 2 if pick.random() < 0.15 and np.size(arrays[wrt]) <= 12 and of == "L" else 1
    if not np.all(np.isfinite(prog.compile(of=of)(**arrays))):
        return None
    d = prog.hessian(wrt, of=of) if order == 2 else prog.grad(wrt, of=of)
    value = np.asarray(d.compile()(**arrays))
    expected = np.reshape(autodiff(prog, of, wrt, arrays, order), value.shape)
    if not np.all(np.isfinite(expected)):
        return None
    scale = max(1.0, float(np.max(np.abs(expected), initial=0)))
    error = float(np.max(np.abs(value - expected), initial=0)) / scale
    assert error < 1e-8, f"seed {seed}: d{of}/d{wrt} (order {order}) differs from autograd by {error:.3g}\n" \
                         f"{generated.source}"
    fd = einmlp.check(d, arrays, tolerance=1e-4)
    assert fd.ok, f"seed {seed}: {fd}\n{generated.source}"
    return error


def chunks(config_programs: int):
    return [(start, min(start + CHUNK, config_programs)) for start in range(0, config_programs, CHUNK)]


def pytest_generate_tests(metafunc):
    if "chunk" in metafunc.fixturenames:
        total = metafunc.config.getoption("--programs")
        metafunc.parametrize("chunk", chunks(total), ids=[f"seeds{a}-{b - 1}" for a, b in chunks(total)])


def test_random_programs(chunk):
    worst, skipped = 0.0, 0
    for seed in range(*chunk):
        error = check_one(seed)
        skipped += error is None
        worst = max(worst, error or 0.0)
    print(f"\nrandom programs {chunk[0]}..{chunk[1] - 1}: {chunk[1] - chunk[0] - skipped} checked, "
          f"{skipped} skipped (value overflows), worst relative error against autograd {worst:.3g}")


def test_generator_is_deterministic():
    assert random_program(123).source == random_program(123).source
