"""Softmax rows computed with their maximum subtracted.

`P[t,u] = exp(S[t,u]) / sum[v](exp(S[t,v]))` (or the same through `E[t,u] = exp(S[t,u])`)
overflows once a logit passes 709, and its second derivatives, which hold
`exp(S) * exp(S) / sum^2`, once one passes about 354: the Hessian of attention came out
finite and wrong by 10^5 there. P does not change when a row of S is shifted by a constant,
so neither does anything that reads S only through P, nor any derivative of it (a derivative
of a function unchanged by the shift is unchanged too, whatever intermediates carry it). The
generated code therefore reads S as `S - max over the row`, where the program reads S only
through such softmaxes and nobody asks for the value of S, its exponential or the row sum.
"""

from __future__ import annotations

import sympy as sp

from .symbolic import ESum, Model


def softmax_shifts(model: Model, values: tuple[str, ...] = ()) -> dict[str, int]:
    """Tensor name -> the axis along which its rows may be shifted by their maximum.

    `values` are the tensors whose own values the caller returns or differentiates: none of
    S, E or the row sum may be among them, since their values do change with the shift.
    """
    readers: dict[str, list[str]] = {}
    for name, refs in model.refs.items():
        for ref in set(refs):
            readers.setdefault(ref, []).append(name)
    shifts = {}
    for name, d in model.definitions.items():
        found = _softmax(model, d.expr)
        if found is None:
            continue
        total, logits, exponent, axis = found
        chain = {total, logits} | ({exponent} if exponent else set())
        readers_of = {total: {name}, logits: {exponent or total} | ({name} if not exponent else set())}
        if exponent:
            readers_of[exponent] = {name, total}
        if chain & set(values) or any(set(readers.get(n, ())) != readers_of[n] for n in chain):
            continue
        if logits in shifts and shifts[logits] != axis:
            continue
        shifts[logits] = axis
    return shifts


def _softmax(model: Model, expr: sp.Expr):
    """(row sum, logits, exponential or None, axis) if `expr` is N[..,u,..] / sum over u of N, N = exp(S)."""
    factors = sp.Mul.make_args(expr)
    if len(factors) != 2:
        return None
    top, bottom = sorted(factors, key=lambda f: f.is_Pow and f.exp == -1)
    if not (bottom.is_Pow and bottom.exp == -1 and isinstance(bottom.base, sp.Indexed)):
        return None
    total = bottom.base.base.label.name
    t = model.definitions.get(total)
    if t is None or not t.lifted or not isinstance(t.expr, ESum) or len(t.expr.indices) != 1:
        return None
    summed, body = t.expr.indices[0], t.expr.body
    if _same_kind(top, body) is None or summed not in _indices(body) or _indices(body).count(summed) != 1:
        return None
    axis = _indices(body).index(summed)
    row = tuple(i for k, i in enumerate(_indices(body)) if k != axis)
    top_row = tuple(i for k, i in enumerate(_indices(top)) if k != axis)
    if row != tuple(t.indices) or top_row != tuple(bottom.base.indices) or not _indices(top)[axis].is_Symbol:
        return None
    if isinstance(top, sp.exp):
        return total, top.args[0].base.label.name, None, axis
    exponent = model.definitions.get(top.base.label.name)
    if exponent is None or not isinstance(exponent.expr, sp.exp) or not isinstance(exponent.expr.args[0], sp.Indexed):
        return None
    inner = exponent.expr.args[0]
    if tuple(inner.indices) != tuple(exponent.indices):
        return None
    return total, inner.base.label.name, exponent.name, axis


def _same_kind(top: sp.Expr, body: sp.Expr):
    """Both exp(S[...]) of one tensor S, or both E[...] of one tensor E; the tensor's name."""
    if isinstance(top, sp.exp) and isinstance(body, sp.exp):
        top, body = top.args[0], body.args[0]
    if isinstance(top, sp.Indexed) and isinstance(body, sp.Indexed) and top.base == body.base:
        return top.base.label.name
    return None


def _indices(e: sp.Expr) -> tuple:
    return tuple((e.args[0] if isinstance(e, sp.exp) else e).indices)
