"""How long einmlp takes to derive and compile gradients, as programs grow; and a transformer block's run time.

    python benchmarks/bench_derive.py              # the derive table (and jax's first call, where installed)
    python benchmarks/bench_derive.py --runtime    # the transformer block against torch autograd, where installed
    python benchmarks/bench_derive.py --long       # only the fuzzer's longest inputs: gradients and a Hessian

Derivation is linear in the program (one adjoint per statement), so the table's interesting
column is how time grows with depth: t(32)/t(8) for the residual network. Each derive in the
table runs in a new process (`--repeat` of them, median shown), as a user's first derive does. Run-time figures
are ratios to torch measured in the same process; absolute times on shared machines are noise.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import einmlp


def mlp(layers: int) -> tuple[str, list[str]]:
    """tanh MLP with a bias per layer: all weights and biases."""
    lines = [f"H{k}[b,z] = tanh({'X' if k == 1 else f'H{k - 1}'}[b,y] W{k}[y,z] + c{k}[z])" for k in range(1, layers + 1)]
    lines.append(f"L = (H{layers}[b,z] - T[b,z])^2")
    return "\n".join(lines), [f"W{k}" for k in range(1, layers + 1)] + [f"c{k}" for k in range(1, layers + 1)]


def residual(blocks: int) -> tuple[str, list[str]]:
    """H_l = tanh(H_{l-1} W_l) + H_{l-1}: 2^L chains from the loss to W1."""
    lines = []
    for k in range(1, blocks + 1):
        prev = "X" if k == 1 else f"H{k - 1}"
        lines.append(f"H{k}[b,z] = tanh({prev}[b,y] W{k}[y,z]) + {prev}[b,z]")
    lines.append(f"L = (H{blocks}[b,z] - T[b,z])^2")
    return "\n".join(lines), [f"W{k}" for k in range(1, blocks + 1)]


def fibonacci(k: int) -> tuple[str, list[str]]:
    """A_k = tanh(A_{k-1} + A_{k-2}): every statement used twice."""
    lines = ["A1[b,z] = tanh(X[b,y] W[y,z])", "A2[b,z] = tanh(A1[b,y] V[y,z])"]
    lines += [f"A{j}[b,z] = tanh(A{j - 1}[b,z] + A{j - 2}[b,z])" for j in range(3, k + 1)]
    return "\n".join(lines + [f"L = A{k}[b,z] A{k}[b,z]"]), ["W", "V"]


def dense(depth: int) -> tuple[str, list[str]]:
    """Each layer reads the sum of all earlier ones (DenseNet-style)."""
    lines = []
    for k in range(1, depth + 1):
        earlier = " + ".join(["X[b,y]"] + [f"H{j}[b,y]" for j in range(1, k)])
        lines += [f"S{k}[b,y] = {earlier}", f"H{k}[b,z] = tanh(S{k}[b,y] W{k}[y,z])"]
    return "\n".join(lines + [f"L = H{depth}[b,z] H{depth}[b,z]"]), [f"W{k}" for k in range(1, depth + 1)]


def power(copies: int) -> tuple[str, list[str]]:
    """One statement multiplying `copies` copies of a matrix: X[i0,i1] X[i1,i2] ..."""
    product = " ".join(f"X[i{k},i{k + 1}]" for k in range(copies))
    return f"P[i0,i{copies}] = {product}\nL = P[i0,i{copies}] P[i0,i{copies}]", ["X"]


def chain(n: int) -> tuple[str, list[str]]:
    """The fuzzer's long chain: n statements of functions, biases, X W read again and products by V."""
    functions, extra = ["tanh", "sigmoid", "sin", "", "softplus"], ["0.1", "X[i,k] W[k,j]", "b[j]", "1"]
    lines = ["A0[i,j] = X[i,k] W[k,j]"]
    for s in range(1, n):
        lines.append(f"A{s}[i,j] = A{s - 1}[i,k] V[k,j]" if s % 5 == 4
                     else f"A{s}[i,j] = {functions[s % 5]}(A{s - 1}[i,j]) + {extra[s % 4]}")
    return "\n".join(lines + [f"L = A{n - 1}[i,j]^2"]), ["X", "W", "V", "b"]


def nest(depth: int) -> tuple[str, list[str]]:
    """tanh(tanh(...(x[i]))) written in one statement."""
    return f"L = {'tanh(' * depth}x[i]{')' * depth} x[i]", ["x"]


def transformer(width: int) -> str:
    """Single-head attention with softmax, residual, layer norm, 2-layer ReLU MLP with biases, residual."""
    return f"""\
Q[b,t,d] = X[b,t,e] Wq[e,d]
K[b,t,d] = X[b,t,e] Wk[e,d]
V[b,t,d] = X[b,t,e] Wv[e,d]
E[b,t,u] = exp(s Q[b,t,d] K[b,u,d])
P[b,t,u] = E[b,t,u] / sum[v](E[b,t,v])
R[b,t,d] = X[b,t,d] + P[b,t,u] V[b,u,d]
C[b,t,d] = R[b,t,d] - sum[e](R[b,t,e]) / {width}
Z[b,t,d] = G[d] C[b,t,d] / sqrt(sum[e](C[b,t,e]^2) / {width} + 0.00001)
F[b,t,h] = relu(Z[b,t,d] W1[d,h] + b1[h])
O[b,t,d] = Z[b,t,d] + F[b,t,h] W2[h,d] + b2[d]
L = (O[b,t,d] - Y[b,t,d])^2
"""


TRANSFORMER_WEIGHTS = ["Wq", "Wk", "Wv", "G", "W1", "b1", "W2", "b2"]


def derive_seconds(source: str, wrt: list[str]) -> float:
    start = time.perf_counter()
    einmlp.parse(source).grad(wrt).compile()
    return time.perf_counter() - start


_FRESH = """
import sys, time
import einmlp
source, wrt = sys.stdin.read(), sys.argv[1:]
start = time.perf_counter()
einmlp.parse(source).grad(wrt).compile()
print(time.perf_counter() - start)
"""


def fresh_derive_seconds(source: str, wrt: list[str], repeat: int) -> tuple[float, float, float]:
    """(median, min, max) of derive + compile, each in a new process after `import einmlp`.

    A second derive in one process is faster only because einmlp and sympy then hold that
    program's expressions in their caches; a user's first derive has none of them.
    """
    samples = []
    for _ in range(repeat):
        done = subprocess.run([sys.executable, "-c", _FRESH, *wrt], input=source, capture_output=True, text=True,
                              check=True, cwd=Path(__file__).resolve().parent.parent)
        samples.append(float(done.stdout.split()[-1]))
    return statistics.median(samples), min(samples), max(samples)


def hessian_seconds(source: str, wrt: str) -> float:
    start = time.perf_counter()
    einmlp.parse(source).hessian(wrt).compile()
    return time.perf_counter() - start


def jax_first_call(source_builder, arg) -> str:
    """jax.jit(grad) trace + compile of the same model written in jax.numpy, where jax is installed."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return "-"
    kind, n = source_builder, arg
    if kind is not mlp and kind is not residual:
        return "-"
    rng = np.random.default_rng(0)
    width = 8
    weights = [jnp.asarray(0.3 * rng.standard_normal((width, width))) for _ in range(n)]
    biases = [jnp.zeros(width) for _ in range(n)] if kind is mlp else []
    x, t = jnp.asarray(rng.standard_normal((16, width))), jnp.asarray(rng.standard_normal((16, width)))

    def loss(params):
        ws, cs = params
        h = x
        for k, w in enumerate(ws):
            h = jnp.tanh(h @ w + cs[k]) if cs else jnp.tanh(h @ w) + h
        return jnp.sum((h - t) ** 2)
    start = time.perf_counter()
    jax.block_until_ready(jax.jit(jax.grad(loss))((weights, biases)))
    return f"{time.perf_counter() - start:.2f}"


def derive_table(repeat: int) -> None:
    rows = [("tanh MLP, all gradients", mlp, [8, 32, 64]),
            ("residual tanh net, all gradients", residual, [8, 32]),
            ("A_k = tanh(A_k-1 + A_k-2), all gradients", fibonacci, [32]),
            ("dense net (each layer sums all earlier), all gradients", dense, [12]),
            ("16 copies of a matrix in one statement", power, [16])]
    print(f"derive + compile in a fresh process each time: median (min-max) of {repeat}")
    print(f"{'model':58} {'size':>5} {'einmlp derive+compile s':>24} {'jax first call s':>17}")
    times = {}
    for label, builder, sizes in rows:
        for n in sizes:
            source, wrt = builder(n)
            times[(label, n)] = median, low, high = fresh_derive_seconds(source, wrt, repeat)
            spread = f"{median:.2f} ({low:.2f}-{high:.2f})"
            print(f"{label:58} {n:>5} {spread:>24} {jax_first_call(builder, n):>17}", flush=True)
    t_res = [times[("residual tanh net, all gradients", n)][0] for n in (8, 32)]
    print(f"\nresidual net t(32)/t(8) = {t_res[1] / t_res[0]:.2f} from the medians (linear in depth would be 4)")
    for blocks in (4, 5, 6):
        source, _ = residual(blocks)
        start = time.perf_counter()
        d = einmlp.parse(source).grad("W1")
        d.compile()
        print(f"residual net depth {blocks}, grad W1 alone ({d.mode}): {time.perf_counter() - start:.2f} s")
    start = time.perf_counter()
    prog = einmlp.parse(transformer(64))
    grads = prog.grad(TRANSFORMER_WEIGHTS)
    grads.compile()
    print(f"transformer block, all weight gradients: {time.perf_counter() - start:.2f} s")
    long_table()


def long_table() -> None:
    """The fuzzer's longest inputs: a 100-statement chain and a deep tanh nest, gradients and a Hessian."""
    print(f"\n{'long program':58} {'size':>5} {'all gradients s':>16} {'Hessian s':>10}")
    for label, builder, n, wrt in [("chain of statements (Hessian of V)", chain, 100, "V"),
                                   ("tanh nested in one statement (Hessian of x)", nest, 40, "x")]:
        source, names = builder(n)
        print(f"{label:58} {n:>5} {derive_seconds(source, names):>16.2f} {hessian_seconds(source, wrt):>10.2f}",
              flush=True)


def transformer_arrays(batch: int, seq: int, width: int, hidden: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    scale = 1 / np.sqrt(width)
    return {"X": rng.standard_normal((batch, seq, width)), "Y": rng.standard_normal((batch, seq, width)),
            "s": np.array(scale), "G": np.ones(width),
            **{w: scale * rng.standard_normal((width, width)) for w in ("Wq", "Wk", "Wv")},
            "W1": scale * rng.standard_normal((width, hidden)), "b1": np.zeros(hidden),
            "W2": scale * rng.standard_normal((hidden, width)) / 2, "b2": np.zeros(width)}


def torch_transformer(arrays: dict):
    import torch
    t = {k: torch.tensor(v, requires_grad=k in TRANSFORMER_WEIGHTS) for k, v in arrays.items()}
    width = arrays["X"].shape[-1]

    def step():
        for w in TRANSFORMER_WEIGHTS:
            t[w].grad = None
        x = t["X"]
        q, k, v = x @ t["Wq"], x @ t["Wk"], x @ t["Wv"]
        p = torch.softmax(t["s"] * q @ k.transpose(1, 2), dim=-1)
        r = x + p @ v
        c = r - r.sum(-1, keepdim=True) / width
        z = t["G"] * c / torch.sqrt((c * c).sum(-1, keepdim=True) / width + 1e-5)
        o = z + torch.relu(z @ t["W1"] + t["b1"]) @ t["W2"] + t["b2"]
        ((o - t["Y"]) ** 2).sum().backward()
        return {w: t[w].grad for w in TRANSFORMER_WEIGHTS}
    return step


def median_seconds(fn, repeat: int = 7) -> float:
    fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
        time.sleep(0.05)
    return statistics.median(samples)


def runtime() -> None:
    arrays = transformer_arrays(batch=32, seq=128, width=64, hidden=128)
    start = time.perf_counter()
    fn = einmlp.parse(transformer(64)).grad(TRANSFORMER_WEIGHTS).compile()
    print(f"transformer block (batch 32, sequence 128, width 64), derive + compile: {time.perf_counter() - start:.2f} s")
    ours = median_seconds(lambda: fn(**arrays))
    try:
        import torch
    except ImportError:
        print(f"einmlp all gradients: {ours * 1e3:.1f} ms (torch is not installed: no ratio)")
        return
    torch.set_num_threads(2)
    step = torch_transformer(arrays)
    expected = step()
    got = fn(**arrays)
    worst = max(float(np.max(np.abs(got[w] - expected[w].numpy())) / (np.max(np.abs(expected[w].numpy())) + 1e-30))
                for w in TRANSFORMER_WEIGHTS)
    theirs = median_seconds(step)
    print(f"einmlp / torch autograd (float64, same process): {ours / theirs:.2f}  "
          f"(largest relative difference of the gradients: {worst:.1e})")
    grads = einmlp.parse(transformer(64)).grad(TRANSFORMER_WEIGHTS)
    variants = {"einmlp fused (numba)": (grads.compile(backend="numba"), arrays)}
    variants["einmlp on torch tensors"] = (grads.compile(), {k: torch.tensor(v) for k, v in arrays.items()})
    try:
        import jax
        jax.config.update("jax_enable_x64", True)
        variants["einmlp on jax (jitted)"] = (grads.compile(), {k: jax.numpy.asarray(v) for k, v in arrays.items()})
    except ImportError:
        pass
    for name, (compiled, given) in variants.items():
        try:
            seconds = median_seconds(lambda c=compiled, g=given: _block(c(**g)))
        except einmlp.EinmlpError as exc:
            print(f"{name}: {exc}")
            continue
        print(f"{name} / torch autograd: {seconds / theirs:.2f}")


def _block(result: dict) -> dict:
    """Wait for a lazy or asynchronous result (jax dispatches asynchronously)."""
    for value in result.values():
        getattr(value, "block_until_ready", lambda: None)()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", action="store_true", help="time the transformer block against torch instead")
    parser.add_argument("--long", action="store_true", help="only the long programs (chain and deep nest)")
    parser.add_argument("--repeat", type=int, default=5, help="fresh processes per row of the derive table")
    args = parser.parse_args()
    runtime() if args.runtime else long_table() if args.long else derive_table(args.repeat)


if __name__ == "__main__":
    main()
