"""A batch that never sits in memory: the article net's gradients over 10^8 rows with dask.

    python benchmarks/dask_batch.py [--rows 100000000] [--chunk 1000000] [--cluster]

The rows are drawn lazily chunk by chunk (dask.array.random), the compiled gradient
builds a lazy graph on them, and the sum over the batch is dask's tree reduction, so
peak memory is a few chunks, not the 3.2 GB that X and Y would take. `--cluster` runs it
on a dask.distributed LocalCluster, as on a real cluster. Prints the time, the peak
resident memory of this process and the gradients.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np

import einmlp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10**8)
    parser.add_argument("--chunk", type=int, default=10**6)
    parser.add_argument("--cluster", action="store_true", help="run on a dask.distributed LocalCluster")
    args = parser.parse_args()
    import dask.array as da

    program = einmlp.load(Path(__file__).resolve().parents[1] / "derivations" / "article.ein")
    rng = np.random.default_rng(0)
    weights = {"W1": 0.5 * rng.standard_normal((3, 4)), "W2": 0.5 * rng.standard_normal((4, 1))}
    state = da.random.default_rng(1)
    X = state.standard_normal((args.rows, 3), chunks=(args.chunk, 3))
    Y = state.standard_normal((args.rows, 1), chunks=(args.chunk, 1))
    grads = program.grad(["W1", "W2"], of="Delta").compile()
    lazy = grads(X=X, Y=Y, **weights)
    print(f"{args.rows:,} rows in chunks of {args.chunk:,}: a lazy graph of "
          f"{sum(len(v.__dask_graph__()) for v in lazy.values()):,} tasks")
    start = time.perf_counter()
    if args.cluster:
        from distributed import Client, LocalCluster
        with LocalCluster(processes=False, dashboard_address=None) as cluster, Client(cluster):
            result = {n: v.compute() for n, v in lazy.items()}
    else:
        import dask
        result = dict(zip(lazy, dask.compute(*lazy.values())))
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"computed in {elapsed:.1f} s; peak resident memory {peak:.2f} GiB "
          f"(X and Y in memory would take {args.rows * 4 * 8 / 2**30:.1f} GiB)")
    for name, value in result.items():
        print(f"d Delta / d {name} =\n{np.array2string(value, precision=4)}")


if __name__ == "__main__":
    main()
