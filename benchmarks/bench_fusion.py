"""Where fused numba kernels pay: plain numpy against fused code on the same plan, by size.

    python benchmarks/bench_fusion.py

For each workload and batch size, the plain and the fused compiled functions are timed
interleaved in one process (median of several blocks, a pause between blocks) and the
ratio fused / plain is printed; einmlp's default fuses from `fusion.FUSE_FROM` input
elements, which this table should support. Also prints the first-call cost of the fused
code in a fresh process, with and without the kernels in the disk cache.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import einmlp
from einmlp import fusion

ROOT = Path(__file__).resolve().parents[1]
WORKLOADS = {
    "article net, all gradients": ((ROOT / "derivations" / "article.ein").read_text(), ["W1", "W2"],
                                   lambda b: {"X": (b, 3), "Y": (b, 1)}),
    "tanh MLP 64-64, all gradients": ("H[b,h] = tanh(X[b,d] W1[d,h] + c1[h])\n"
                                      "O[b,k] = sigmoid(H[b,h] W2[h,k] + c2[k])\n"
                                      "L = sum[b,k]((O[b,k] - T[b,k])^2)\n", ["W1", "c1", "W2", "c2"],
                                      lambda b: {"X": (b, 16), "W1": (16, 64), "c1": (64,), "W2": (64, 8),
                                                 "c2": (8,), "T": (b, 8)}),
}


def timed(fn, arrays, number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        fn(**arrays)
    return (time.perf_counter() - start) / number


def compare(source: str, wrt: list, shapes, batch: int) -> tuple[float, int]:
    prog = einmlp.parse(source)
    arrays = prog.example_arrays(**shapes(batch))
    grads = prog.grad(wrt)
    plain, fused = grads.compile(backend="numpy"), grads.compile(backend="numba")
    plain(**arrays), fused(**arrays)
    number = max(3, 200_000 // batch)
    ratios = []
    for _ in range(5):
        a = timed(plain, arrays, number)
        time.sleep(0.05)
        b = timed(fused, arrays, number)
        time.sleep(0.05)
        ratios.append(b / a)
    return statistics.median(ratios), sum(np.size(a) for a in arrays.values())


def first_call(cache: str) -> float:
    code = ("import time, einmlp; p = einmlp.load('derivations/article.ein'); g = p.grad(['W1','W2'])"
            ".compile(backend='numba'); a = p.example_arrays(); t = time.perf_counter(); g(**a); "
            "print(time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "EINMLP_CACHE": cache},
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def main() -> None:
    print(f"threads: OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}, "
          f"NUMBA_NUM_THREADS={os.environ.get('NUMBA_NUM_THREADS', 'unset')}; FUSE_FROM={fusion.FUSE_FROM:,}")
    for name, (source, wrt, shapes) in WORKLOADS.items():
        print(name)
        for batch in (100, 1_000, 3_000, 10_000, 30_000, 100_000):
            ratio, elements = compare(source, wrt, shapes, batch)
            print(f"  batch {batch:>7,} ({elements:>9,} input elements): fused / plain {ratio:.2f}")
    with tempfile.TemporaryDirectory() as cache:
        cold, warm = first_call(cache), first_call(cache)
    print(f"first fused call in a fresh process: {cold:.2f} s compiling, {warm:.2f} s from the disk cache "
          "(both include importing numba)")


if __name__ == "__main__":
    main()
