"""Two-operand contractions that are one numpy matrix product (BLAS), and plain axis sums.

Each function returns numpy source, or "" where its pattern does not apply; opt_einsum's
einsum is left for what none of them covers. `rewrite_products` lets a later stage call
something else for some of the `a @ b` written here (MKL, jax's dot_general).
"""

from __future__ import annotations

import ast
from typing import Callable


def matmul(a: tuple, b: tuple, out: tuple) -> str:
    """Numpy `@` source for a two-operand einsum that is one matrix product, else ""."""
    (va, ia), (vb, ib) = a, b
    shared = [i for i in ia if i in ib]
    rows, cols = [i for i in ia if i not in shared], [i for i in ib if i not in shared]
    if len(set(ia)) < len(ia) or len(set(ib)) < len(ib) or len(shared) != 1 or len(rows) > 1 or len(cols) > 1 \
            or any(i in out for i in shared) or set(rows + cols) != set(out):
        return _batched_matmul(a, b, out) or _leading_matmul(a, b, out) or _flattened_matmul(a, b, out)
    if list(out) != rows + cols:
        (va, ia, rows), (vb, ib, cols) = (vb, ib, cols), (va, ia, rows)
    left = va if list(ia) == rows + shared else f"{va}.T"
    right = vb if list(ib) == shared + cols else f"{vb}.T"
    return f"{left} @ {right}"


def _leading_matmul(a: tuple, b: tuple, out: tuple) -> str:
    """`X @ W` for a matrix applied to one axis of an array with more: X[b,t,e] W[e,d], else "".

    numpy's matmul broadcasts the matrix over the leading axes: one BLAS call, no einsum.
    """
    for (vm, im), (vx, ix) in ((a, b), (b, a)):
        if len(im) != 2 or len(set(im)) < 2 or len(ix) < 3 or len(set(ix)) < len(ix):
            continue
        shared = [i for i in im if i in ix]
        if len(shared) != 1 or shared[0] in out:
            continue
        summed, col = shared[0], im[1] if im[0] == shared[0] else im[0]
        lead = [i for i in ix if i != summed]
        if col in ix or set(out) != set(lead) | {col} or len(out) != len(lead) + 1:
            continue
        code = f"{_arranged(vx, tuple(ix), lead + [summed])} @ {vm if im[0] == summed else vm + '.T'}"
        result = lead + [col]
        return code if result == list(out) else f"np.transpose({code}, {tuple(result.index(i) for i in out)})"
    return ""


def _flattened_matmul(a: tuple, b: tuple, out: tuple) -> str:
    """`X2.T @ G2` for a sum over the same leading axes of both: X[b,t,m] G[b,t,n], else "".

    The leading axes are flattened into one (a reshape), so the weight gradient of a batch of
    sequences is one matrix product.
    """
    (va, ia), (vb, ib) = a, b
    if len(ia) < 3 or len(ia) != len(ib) or ia[:-1] != ib[:-1] or len(set(ia)) < len(ia) or len(set(ib)) < len(ib):
        return ""
    p, q = ia[-1], ib[-1]
    if p == q or set(out) != {p, q} or len(out) != 2:
        return ""
    left, right = (va, vb) if list(out) == [p, q] else (vb, va)
    return f"np.reshape({left}, (-1, {left}.shape[-1])).T @ np.reshape({right}, (-1, {right}.shape[-1]))"


def _arranged(var: str, indices: tuple, order: list) -> str:
    perm = tuple(indices.index(i) for i in order)
    return var if perm == tuple(range(len(perm))) else f"np.transpose({var}, {perm})"


def _batched_matmul(a: tuple, b: tuple, out: tuple) -> str:
    """`A @ B` over leading batch axes (attention's Q K^T per sequence), else "".

    numpy's matmul runs BLAS per batch entry; einsum with a batch index does not.
    """
    (va, ia), (vb, ib) = a, b
    if len(set(ia)) < len(ia) or len(set(ib)) < len(ib) or len(set(out)) < len(out):
        return ""
    batch = [i for i in out if i in ia and i in ib]
    summed = [i for i in ia if i in ib and i not in out]
    rows, cols = [i for i in ia if i not in ib], [i for i in ib if i not in ia]
    if not batch or len(summed) != 1 or len(rows) != 1 or len(cols) != 1 or set(out) != set(batch + rows + cols):
        return ""
    result = batch + rows + cols
    if result != list(out) and batch + cols + rows == list(out):  # Q @ K^T, not (K @ Q^T)^T
        (va, ia, rows), (vb, ib, cols) = (vb, ib, cols), (va, ia, rows)
        result = list(out)
    code = f"{_arranged(va, tuple(ia), batch + rows + summed)} @ {_arranged(vb, tuple(ib), batch + summed + cols)}"
    return code if result == list(out) else f"np.transpose({code}, {tuple(result.index(i) for i in out)})"



def reduction(operand: tuple, out: tuple) -> str:
    """The `.sum(axis=...)` source for a one-operand einsum that only sums axes, else ""."""
    var, indices = operand
    if len(set(indices)) < len(indices) or [i for i in indices if i in out] != list(out):
        return ""
    axes = tuple(k for k, i in enumerate(indices) if i not in out)
    return f"{var}.sum(axis={axes[0] if len(axes) == 1 else axes})" if axes else ""



def rewrite_products(source: str, name: str, operands: Callable) -> str | None:
    """`source` with each `a @ b` for which `operands(a, b)` gives arguments written `name(*arguments)`.

    `operands` takes the two operands' syntax trees and returns the call's, or None to leave
    that product as it is; None if no product was rewritten.
    """
    tree = ast.parse(source)
    rewritten = []

    class Rewrite(ast.NodeTransformer):
        def visit_BinOp(self, node):
            self.generic_visit(node)
            arguments = operands(node.left, node.right) if isinstance(node.op, ast.MatMult) else None
            if arguments is None:
                return node
            rewritten.append(node)
            return ast.Call(ast.Name(name, ast.Load()), list(arguments), [])
    Rewrite().visit(tree)
    return ast.unparse(ast.fix_missing_locations(tree)) + "\n" if rewritten else None
