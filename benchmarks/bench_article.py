"""Compiled gradients against hand-written numpy (and jax/torch where installed), same run.

    python benchmarks/bench_article.py            # article network, batch 10 / 1000 / 100000
    python benchmarks/bench_article.py --derive   # derive+compile time for 2, 8, 32 layers
    python benchmarks/bench_article.py --mlp      # seed 000's MLP, all four gradients at once

Times are medians of repeated calls; ratios (einmlp / baseline) are what to read, since
absolute times on shared machines are noisy. einmlp is timed in its steady state: a small
signature is compiled whole with numba once it has run half a second (jitplan.py), so it is
called for a second first; `numpy` is the same gradient with `backend="numpy"`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import einmlp

ROOT = Path(__file__).resolve().parents[1]


def median_time(fn, *, min_time: float = 0.3, repeat: int = 7) -> float:
    """Median seconds per call, over `repeat` batches of calls lasting about min_time/repeat."""
    fn()
    n, t = 1, 0.0
    while True:
        start = time.perf_counter()
        for _ in range(n):
            fn()
        t = time.perf_counter() - start
        if t > min_time / repeat:
            break
        n *= 2
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        samples.append((time.perf_counter() - start) / n)
    return float(np.median(samples))


def steady(fn, seconds: float = 1.0):
    """`fn`, after calling it for `seconds` (past einmlp's compile of a small signature)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        fn()
    return fn


def handwritten(X, W1, W2, Y):
    """The article's numpy (its dW1, negated to the true gradient)."""
    A = np.dot(X, W1)
    B = A * A
    C = np.dot(B, W2)
    Ytilde = Y - C * C * C
    gradf1, gradf2 = 2 * A, 3 * C * C
    return -2 * np.dot(X.T, np.dot(Ytilde * gradf2, W2.T) * gradf1)


def baselines(arrays):
    out = {"numpy (article)": lambda: handwritten(**arrays)}
    try:
        import jax
        import jax.numpy as jnp
        jax.config.update("jax_enable_x64", True)

        def loss(W1, X, W2, Y):
            return jnp.sum((Y - ((X @ W1) ** 2 @ W2) ** 3) ** 2)
        g = jax.jit(jax.grad(loss))
        ja = {k: jnp.asarray(v) for k, v in arrays.items()}
        out["jax.jit(grad)"] = lambda: g(ja["W1"], ja["X"], ja["W2"], ja["Y"]).block_until_ready()
    except ImportError:
        pass
    try:
        import torch
        ta = {k: torch.tensor(v) for k, v in arrays.items()}
        w1 = ta["W1"].clone().requires_grad_(True)

        def torch_grad():
            w1.grad = None
            loss = torch.sum((ta["Y"] - ((ta["X"] @ w1) ** 2 @ ta["W2"]) ** 3) ** 2)
            loss.backward()
            return w1.grad
        out["torch autograd"] = torch_grad
    except ImportError:
        pass
    return out


def article(batches) -> None:
    prog = einmlp.load(ROOT / "derivations" / "article.ein")
    fn, plain = prog.grad("W1").compile(), prog.grad("W1").compile(backend="numpy")
    names = ["einmlp, numpy", *baselines(_arrays(2))]
    print(f"{'batch':>8} {'einmlp':>12} " + " ".join(f"{name:>28}" for name in names))
    for batch in batches:
        arrays = _arrays(batch)
        np.testing.assert_allclose(fn(**arrays), handwritten(**arrays), rtol=1e-9)
        ours = median_time(steady(lambda: fn(**arrays)))
        np.testing.assert_allclose(fn(**arrays), handwritten(**arrays), rtol=1e-9)
        cells = []
        for base in [lambda: plain(**arrays), *baselines(arrays).values()]:
            theirs = median_time(base)
            cells.append(f"{theirs * 1e6:10.1f} us (x{ours / theirs:5.2f})")
        print(f"{batch:>8} {ours * 1e6:9.1f} us " + " ".join(f"{c:>28}" for c in cells))
    print("ratio = einmlp time / baseline time (below 1: einmlp is faster)")


def _arrays(batch: int) -> dict:
    rng = np.random.default_rng(0)
    return {"X": rng.standard_normal((batch, 3)), "W1": 0.5 * rng.standard_normal((3, 4)),
            "W2": 0.5 * rng.standard_normal((4, 1)), "Y": rng.standard_normal((batch, 1))}


def derive_times(depths) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from test_grad import mlp_source
    for layers in depths:
        start = time.perf_counter()
        prog = einmlp.parse(mlp_source(layers))
        d = prog.grad("W1")
        derived = time.perf_counter()
        d.compile()
        compiled = time.perf_counter()
        print(f"{layers:>3} layers: derive {derived - start:6.2f} s, compile {compiled - derived:6.2f} s")


def mlp_handwritten(X, W1, c1, W2, c2, T):
    """Backpropagation by hand for tanh(X W1 + c1) W2 + c2 against T."""
    H = np.tanh(X @ W1 + c1)
    dO = 2 * (H @ W2 + c2 - T)
    dA = (dO @ W2.T) * (1 - H * H)
    return {"W1": X.T @ dA, "c1": dA.sum(axis=0), "W2": H.T @ dO, "c2": dO.sum(axis=0)}


def mlp(batches) -> None:
    prog = einmlp.load(ROOT / "derivations" / "seed000_bias.ein")
    fn = prog.grad(["W1", "c1", "W2", "c2"]).compile()
    rng = np.random.default_rng(0)
    print(f"{'batch':>8} {'einmlp':>12} {'numpy (by hand)':>28} {'torch autograd':>28}")
    for batch in batches:
        arrays = {"X": rng.standard_normal((batch, 64)), "W1": rng.standard_normal((64, 128)) / 8,
                  "c1": rng.standard_normal(128), "W2": rng.standard_normal((128, 10)) / 11,
                  "c2": rng.standard_normal(10), "T": rng.standard_normal((batch, 10))}
        expected = mlp_handwritten(**arrays)
        for name, value in fn(**arrays).items():
            np.testing.assert_allclose(value, expected[name], rtol=1e-9, atol=1e-9)
        ours = median_time(steady(lambda: fn(**arrays)))
        cells = [median_time(lambda: mlp_handwritten(**arrays))]
        try:
            import torch
            t = {k: torch.tensor(v, requires_grad=k in ("W1", "c1", "W2", "c2")) for k, v in arrays.items()}

            def step():
                for k in ("W1", "c1", "W2", "c2"):
                    t[k].grad = None
                H = torch.tanh(t["X"] @ t["W1"] + t["c1"])
                torch.sum((H @ t["W2"] + t["c2"] - t["T"]) ** 2).backward()
            cells.append(median_time(step))
        except ImportError:
            pass
        text = " ".join(f"{c * 1e6:14.1f} us (x{ours / c:5.2f})" for c in cells)
        print(f"{batch:>8} {ours * 1e6:9.1f} us {text}")
    print("ratio = einmlp time / baseline time (below 1: einmlp is faster)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--derive", action="store_true", help="time derive+compile for deep MLPs")
    parser.add_argument("--mlp", action="store_true", help="seed 000's MLP, all gradients at once")
    args = parser.parse_args()
    if args.mlp:
        mlp([10, 1000, 100000])
    elif args.derive:
        derive_times([2, 8, 32])
    else:
        article([10, 1000, 100000])
