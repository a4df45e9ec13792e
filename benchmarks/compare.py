"""einmlp's compiled gradients against hand-written numpy and the peers that are installed.

    python benchmarks/compare.py            # the whole table, about 10 minutes on 2 cores
    python benchmarks/compare.py --quick    # fewer rounds, shorter blocks: a minute or two
    python benchmarks/compare.py --only hessian --only article
    python benchmarks/compare.py --threads 1   # every library on one thread and one core (a shared machine)

Each workload's competitors (einmlp, numpy by hand, jax.jit(grad), torch autograd, pytensor)
run in one process, interleaved: every round times one block of calls of each, with a pause
after each block so that the BLAS threads of the one before have stopped spinning. The table
gives the median over rounds of the time per call, each peer's time divided by hand-written
numpy's, and einmlp's time divided by numpy's and by the best peer's (lower is better). Every
competitor's result is compared with einmlp's before timing. glibc is told to keep freed memory
(as with MALLOC_TRIM_THRESHOLD_ / MALLOC_MMAP_THRESHOLD_), so that page faults of a fresh heap
do not decide the result; the settings in force are printed first.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import statistics
import sys
import time
from pathlib import Path


def _threads_first() -> int | None:
    """--threads N sets the thread pools' variables before numpy, jax and torch read them."""
    for k, arg in enumerate(sys.argv):
        value = arg.split("=", 1)[1] if arg.startswith("--threads=") else \
            sys.argv[k + 1] if arg == "--threads" and k + 1 < len(sys.argv) else None
        if value:
            for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
                os.environ[var] = value
            if value == "1":
                os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                           " --xla_cpu_multi_thread_eigen=false").strip()
                # XLA's CPU runtime still runs work on a second core with that flag (1.7 cores of
                # CPU per second of wall time measured on a jitted MLP): pin the whole process
                # to one core, so that every library has one.
                if hasattr(os, "sched_setaffinity"):
                    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
            return int(value)
    return None


THREADS = _threads_first()

import numpy as np  # noqa: E402

import einmlp  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_derive import TRANSFORMER_WEIGHTS, torch_transformer, transformer, transformer_arrays  # noqa: E402

PEERS = ("jax.jit(grad)", "torch", "pytensor")
JAX_BACKEND = "einmlp on jax arrays"


# ---------------------------------------------------------------- settings

def keep_freed_memory() -> str:
    """Ask glibc to keep freed memory (no trimming, large mmap threshold), as the env vars would."""
    if os.environ.get("MALLOC_TRIM_THRESHOLD_") or os.environ.get("GLIBC_TUNABLES"):
        return "from the environment"
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return "not glibc: allocator left as it is"
    trim = libc.mallopt(-1, 1 << 30)   # M_TRIM_THRESHOLD
    mmap = libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD (its maximum on 64-bit)
    return f"glibc mallopt: trim threshold 1 GiB ({'ok' if trim else 'refused'}), " \
           f"mmap threshold 32 MiB ({'ok' if mmap else 'refused'})"


def settings(allocator: str) -> list[str]:
    lines = [f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
             f"numpy {np.__version__}, einmlp {einmlp.__version__}",
             f"load average before the run: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
             "(other work on the machine: compare with --threads 1)",
             f"allocator: {allocator}"]
    env = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                      "XLA_FLAGS", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_",
                                      "GLIBC_TUNABLES") if k in os.environ}
    lines.append(f"environment: {env or 'no thread or allocator variables set'}")
    if hasattr(os, "sched_getaffinity"):
        lines.append(f"cores this process may run on: {sorted(os.sched_getaffinity(0))}")
    try:
        from threadpoolctl import threadpool_info
        lines += [f"threadpool: {p.get('internal_api')} {p.get('version')} threads={p.get('num_threads')}"
                  for p in threadpool_info()]
    except ImportError:
        try:
            blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
            lines.append(f"numpy BLAS: {blas.get('name')} {blas.get('version')} (threadpoolctl not installed: "
                         "thread count not read)")
        except Exception:  # an older numpy
            pass
    mkl = einmlp.blas.mkl()
    lines.append("einmlp's large matrix products: " +
                 (f"numpy's BLAS or {mkl.version} (sequential), for each shape the one measured faster" if mkl
                  else "numpy's BLAS (mkl not installed, or EINMLP_MKL=0)"))
    try:
        import torch
        if THREADS:
            torch.set_num_threads(THREADS)
        lines.append(f"torch {torch.__version__}: {torch.get_num_threads()} threads")
    except ImportError:
        pass
    try:
        import jax
        lines.append(f"jax {jax.__version__}: {jax.devices()[0].platform}, float64")
    except ImportError:
        pass
    try:
        import pytensor
        lines.append(f"pytensor {pytensor.__version__}: linker {pytensor.config.linker}, cxx {pytensor.config.cxx!r}")
    except ImportError:
        pass
    return lines


# ---------------------------------------------------------------- the models, once for every array library

def article_loss(m, W1, W2, X, Y):
    return ((Y - ((X @ W1) ** 2 @ W2) ** 3) ** 2).sum()


def mlp_loss(m, *args):
    """tanh layers with biases, squared error: args are W1..WL, c1..cL, X, T."""
    layers = (len(args) - 2) // 2
    h = args[-2]
    for k in range(layers):
        h = m.tanh(h @ args[k] + args[layers + k])
    return ((h - args[-1]) ** 2).sum()


def wide_loss(m, W1, c1, W2, c2, X, T):
    return ((m.tanh(X @ W1 + c1) @ W2 + c2 - T) ** 2).sum()


def hand_article(W1, W2, X, Y):
    A = X @ W1
    B = A * A
    C = B @ W2
    G = (Y - C * C * C) * (-6 * C * C)
    return {"W1": X.T @ ((G @ W2.T) * (2 * A)), "W2": B.T @ G}


def hand_mlp(*args):
    layers = (len(args) - 2) // 2
    hs = [args[-2]]
    for k in range(layers):
        hs.append(np.tanh(hs[-1] @ args[k] + args[layers + k]))
    d, grads = 2 * (hs[-1] - args[-1]), {}
    for k in range(layers, 0, -1):
        d = d * (1 - hs[k] * hs[k])
        grads[f"W{k}"], grads[f"c{k}"] = hs[k - 1].T @ d, d.sum(axis=0)
        if k > 1:
            d = d @ args[k - 1].T
    return grads


def hand_wide(W1, c1, W2, c2, X, T):
    H = np.tanh(X @ W1 + c1)
    dO = 2 * (H @ W2 + c2 - T)
    dA = (dO @ W2.T) * (1 - H * H)
    return {"W1": X.T @ dA, "c1": dA.sum(axis=0), "W2": H.T @ dO, "c2": dO.sum(axis=0)}


def hand_hessian(w, X, y):
    """The closed form with BLAS syrk: numpy's matmul uses it for A.T @ A of one buffer."""
    s = 1 / (1 + np.exp(-(X @ w)))
    Xs = X * np.sqrt(s * (1 - s))[:, None]
    return Xs.T @ Xs


def logistic_loss(m, w, X, y):
    z = X @ w
    return -(y * m.log(m.sigmoid(z)) + (1 - y) * m.log(1 - m.sigmoid(z))).sum()


# ---------------------------------------------------------------- competitors

class Workload:
    def __init__(self, name, source, params, arrays, loss, hand=None, hessian=False, peers=PEERS):
        self.name, self.params, self.arrays, self.loss = name, params, arrays, loss
        self.hand, self.hessian, self.peers = hand, hessian, peers
        self.source = source   # an einmlp.Program

    def order(self):
        data = [n for n in self.arrays if n not in self.params]
        return list(self.params) + data

    def competitors(self) -> dict:
        prog, arrays = self.source, self.arrays
        d = prog.hessian(self.params[0]) if self.hessian else prog.grad(list(self.params))
        fn = d.compile()
        out = {"einmlp": lambda: fn(**arrays)}
        out.update(einmlp_on_jax(fn, arrays))
        if self.hand:
            args = [arrays[n] for n in self.order()]
            out["numpy (hand)"] = lambda: self.hand(*args)
        for peer, build in (("jax.jit(grad)", self.jax), ("torch", self.torch), ("pytensor", self.pytensor)):
            if peer in self.peers:
                try:
                    out[peer] = build()
                except ImportError:
                    pass
        return out

    def jax(self):
        import jax
        jax.config.update("jax_enable_x64", True)
        import jax.nn
        import jax.numpy as jnp

        class m:
            tanh, log, sigmoid = jnp.tanh, jnp.log, jax.nn.sigmoid
        names, k = self.order(), len(self.params)
        values = [jnp.asarray(self.arrays[n]) for n in names]

        def f(*a):
            return self.loss(m, *a)
        g = jax.jit(jax.hessian(f) if self.hessian else jax.grad(f, argnums=tuple(range(k))))

        def call():
            return jax.block_until_ready(g(*values))
        return call

    def torch(self):
        import torch
        names, k = self.order(), len(self.params)

        class m:
            tanh, log, sigmoid = torch.tanh, torch.log, torch.sigmoid
        values = [torch.tensor(self.arrays[n], requires_grad=j < k) for j, n in enumerate(names)]
        if self.hessian:
            def call():
                return torch.autograd.functional.hessian(lambda w: self.loss(m, w, *values[1:]), values[0],
                                                         vectorize=True)
            return call

        def step():
            for v in values[:k]:
                v.grad = None
            self.loss(m, *values).backward()
            return [v.grad for v in values[:k]]
        return step

    def pytensor(self):
        import pytensor
        import pytensor.tensor as pt

        class m:
            tanh, log, sigmoid = pt.tanh, pt.log, pt.sigmoid
        names, k = self.order(), len(self.params)
        symbols = [pt.tensor(n, dtype="float64", shape=(None,) * np.ndim(self.arrays[n])) for n in names]
        cost = self.loss(m, *symbols)
        outputs = pytensor.gradient.hessian(cost, symbols[0]) if self.hessian else pytensor.grad(cost, symbols[:k])
        f = pytensor.function(symbols, outputs)
        values = [self.arrays[n] for n in names]
        return lambda: f(*values)


def einmlp_on_jax(fn, arrays: dict) -> dict:
    """The same compiled function given jax arrays: its jax backend (jitted), where jax is installed."""
    try:
        import jax
    except ImportError:
        return {}
    jax.config.update("jax_enable_x64", True)
    given = {n: jax.numpy.asarray(a) for n, a in arrays.items()}

    def call():
        result = fn(**given)
        return jax.block_until_ready(result)
    return {JAX_BACKEND: call}


def transformer_competitors(arrays: dict) -> dict:
    fn = einmlp.parse(transformer(arrays["X"].shape[-1])).grad(TRANSFORMER_WEIGHTS).compile()
    out = {"einmlp": lambda: fn(**arrays)}
    out.update(einmlp_on_jax(fn, arrays))
    try:
        out["torch"] = torch_transformer(arrays)
    except ImportError:
        pass
    try:
        import jax
        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp
        width = arrays["X"].shape[-1]
        data = {k: jnp.asarray(v) for k, v in arrays.items()}

        def loss(params, data):
            x = data["X"]
            q, k, v = x @ params["Wq"], x @ params["Wk"], x @ params["Wv"]
            p = jax.nn.softmax(data["s"] * q @ jnp.swapaxes(k, 1, 2), axis=-1)
            r = x + p @ v
            c = r - r.sum(-1, keepdims=True) / width
            z = params["G"] * c / jnp.sqrt((c * c).sum(-1, keepdims=True) / width + 1e-5)
            o = z + jax.nn.relu(z @ params["W1"] + params["b1"]) @ params["W2"] + params["b2"]
            return ((o - data["Y"]) ** 2).sum()
        g = jax.jit(jax.grad(loss))
        params = {w: data[w] for w in TRANSFORMER_WEIGHTS}
        out["jax.jit(grad)"] = lambda: jax.block_until_ready(g(params, data))
    except ImportError:
        pass
    return out


def _flat(result, names) -> list[np.ndarray]:
    if isinstance(result, dict):
        return [np.asarray(getattr(result[k], "detach", lambda k=k: result[k])()) for k in names]
    if isinstance(result, (list, tuple)):
        return [np.asarray(getattr(r, "detach", lambda r=r: r)()) for r in result]
    return [np.asarray(getattr(result, "detach", lambda: result)())]


def agree(a, b, names) -> bool:
    """Whether two results hold the same numbers: a dict by `names`, or a sequence in that order."""
    fa, fb = _flat(a, names), _flat(b, names)
    if len(fa) != len(fb):
        return False
    return all(np.allclose(np.reshape(x, np.shape(y)), y, rtol=1e-7, atol=1e-9 * (1 + np.max(np.abs(y))))
               for x, y in zip(fa, fb))


# ---------------------------------------------------------------- timing

def calibrate(fn, block: float) -> int:
    """Calls per block: enough for the block to last about `block` seconds."""
    fn()
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-7)
    return max(1, int(block / once))


def steady(fn, seconds: float) -> None:
    """Call `fn` for `seconds`: einmlp compiles a small signature whole with numba once it has
    spent `compiled.WHOLE_AFTER` seconds in numpy calls (a training loop's steady state, as the
    peers' timings are after their jit compile)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        fn()


def measure(competitors: dict, rounds: int, block: float, pause: float) -> dict:
    """Median seconds per call of each competitor, blocks interleaved, a pause after each."""
    counts = {name: calibrate(fn, block) for name, fn in competitors.items()}
    samples: dict = {name: [] for name in competitors}
    names = list(competitors)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:  # each starts a round in turn
            fn, n = competitors[name], counts[name]
            start = time.perf_counter()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter() - start) / n)
            time.sleep(pause)
    return {name: statistics.median(s) for name, s in samples.items()}


def workloads(quick: bool) -> list:
    rng = np.random.default_rng(0)
    out = []
    article = einmlp.load(ROOT / "derivations" / "article.ein")
    for batch in (10, 1000, 100000):
        arrays = {"W1": 0.5 * rng.standard_normal((3, 4)), "W2": 0.5 * rng.standard_normal((4, 1)),
                  "X": rng.standard_normal((batch, 3)), "Y": rng.standard_normal((batch, 1))}
        out.append(Workload(f"article net, B={batch:,}", article, ("W1", "W2"), arrays, article_loss, hand_article))
    wide = einmlp.parse("H[b,z] = tanh(X[b,d] W1[d,z] + c1[z])\nO[b,k] = H[b,z] W2[z,k] + c2[k]\n"
                        "L = (O[b,k] - T[b,k])^2")
    arrays = {"W1": rng.standard_normal((256, 512)) / 16, "c1": 0.1 * rng.standard_normal(512),
              "W2": rng.standard_normal((512, 10)) / 23, "c2": 0.1 * rng.standard_normal(10),
              "X": rng.standard_normal((4096, 256)), "T": rng.standard_normal((4096, 10))}
    out.append(Workload("wide net B=4096 256-512-10", wide, ("W1", "c1", "W2", "c2"), arrays, wide_loss, hand_wide))
    for layers in (2, 8):
        source = "\n".join(f"H{k}[b,z] = tanh({'X' if k == 1 else f'H{k - 1}'}[b,y] W{k}[y,z] + c{k}[z])"
                           for k in range(1, layers + 1)) + f"\nL = (H{layers}[b,z] - T[b,z])^2"
        params = tuple(f"W{k}" for k in range(1, layers + 1)) + tuple(f"c{k}" for k in range(1, layers + 1))
        arrays = {**{f"W{k}": rng.standard_normal((256, 256)) / 16 for k in range(1, layers + 1)},
                  **{f"c{k}": 0.1 * rng.standard_normal(256) for k in range(1, layers + 1)},
                  "X": rng.standard_normal((1024, 256)), "T": rng.standard_normal((1024, 256))}
        out.append(Workload(f"tanh MLP w256 B=1024 all grads L={layers}", einmlp.parse(source), params, arrays,
                            mlp_loss, hand_mlp))
    logistic = einmlp.load(ROOT / "derivations" / "logistic_regression.ein")
    for d in (10, 100, 1000):
        arrays = {"w": rng.standard_normal(d) / np.sqrt(d), "X": rng.standard_normal((1000, d)),
                  "y": (rng.random(1000) > 0.5).astype(float)}
        out.append(Workload(f"logistic Hessian n=1000 d={d}", logistic, ("w",), arrays, logistic_loss, hand_hessian,
                            hessian=True, peers=("jax.jit(grad)", "torch")))
    return out


def fmt(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    return f"{seconds * 1e3:.2f} ms" if seconds < 1 else f"{seconds:.2f} s"


def row(name: str, times: dict, ok: dict) -> str:
    hand = times.get("numpy (hand)")
    ours = times["einmlp"]
    cells = [name, fmt(ours) + ("" if ok.get("einmlp", True) else " (!)")]
    cells.append(fmt(hand))
    for peer in PEERS:
        t = times.get(peer)
        mark = "" if ok.get(peer, True) else " (!)"
        cells.append("-" if t is None else (f"{fmt(t)} ({t / hand:.2f}x)" if hand else fmt(t)) + mark)
    best = min((times[p] for p in PEERS if p in times), default=None)
    cells.append(f"{ours / hand:.2f}" if hand else "-")
    cells.append(f"{ours / best:.2f}" if best else "-")
    on_jax, jax_jit = times.get(JAX_BACKEND), times.get("jax.jit(grad)")
    cells.append(f"{fmt(on_jax)} ({on_jax / jax_jit:.2f}x)" if on_jax and jax_jit else fmt(on_jax))
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds of 0.1 s blocks instead of 7 of 0.4 s")
    parser.add_argument("--only", action="append", default=[], help="workloads whose name contains this (repeat)")
    parser.add_argument("--threads", type=int,
                        help="threads for BLAS, torch and jax (default: theirs); 1 also pins the process to one core")
    args = parser.parse_args()
    allocator = keep_freed_memory()
    rounds, block, pause = (3, 0.1, 0.1) if args.quick else (7, 0.4, 0.3)
    print("\n".join(settings(allocator)))
    print(f"timing: {rounds} rounds, blocks of ~{block} s per competitor, {pause} s pause after each block\n")
    header = ["workload", "einmlp", "numpy (hand)", *[f"{p} (/numpy)" for p in PEERS], "einmlp / numpy",
              "einmlp / best peer", f"{JAX_BACKEND} (/jax.jit)"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    jobs = [(w.name, w.competitors, w.params) for w in workloads(args.quick)]
    jobs.append(("transformer block B=32 T=128 d=64, all weights",
                 lambda: transformer_competitors(transformer_arrays(batch=32, seq=128, width=64, hidden=128)),
                 TRANSFORMER_WEIGHTS))
    for name, build, names in jobs:
        if args.only and not any(o.lower() in name.lower() for o in args.only):
            continue
        competitors = build()
        reference = competitors["einmlp"]()
        steady(competitors["einmlp"], 2 * einmlp.compiled.WHOLE_AFTER)
        ok = {k: agree(fn(), reference, names) for k, fn in competitors.items() if k != "einmlp"}
        ok["einmlp"] = agree(competitors["einmlp"](), reference, names)  # the same after compiling whole
        times = measure(competitors, rounds, block, pause)
        print(row(name, times, ok), flush=True)
    print("\n(!): that competitor's result differs from einmlp's. Times are medians per call; "
          "ratios below 1 mean einmlp is faster. einmlp on numpy arrays runs fused numba kernels from "
          f"{einmlp.fusion.FUSE_FROM:,} input elements, and below that the whole plan as one numba function "
          "once a signature has run for half a second (timed after that), where numba is installed "
          f"({'yes' if einmlp.fusion.available() else 'no'} here); from the same size its large matrix "
          "products run on MKL where it is installed and faster "
          f"({'installed' if einmlp.blas.available() else 'not installed'} here).")


if __name__ == "__main__":
    main()
