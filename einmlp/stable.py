"""Numerical care in the generated code: the program's own values, computed where they are finite.

- Softmax rows less their maximum. `P[t,u] = exp(S[t,u]) / sum[v](exp(S[t,v]))` (or the
  same through `E[t,u] = exp(S[t,u])`) overflows once a logit passes 709, and its second
  derivatives, which hold `exp(S) * exp(S) / sum^2`, once one passes about 354: the Hessian
  of attention came out finite and wrong by 10^5 there. P does not change when a row of S
  is shifted by a constant, so neither does anything that reads S only through P, nor any
  derivative of it (a derivative of a function unchanged by the shift is unchanged too,
  whatever intermediates carry it). The generated code therefore reads S as `S - max over
  the row`, where the program reads S only through such softmaxes and nobody asks for the
  value of S, its exponential or the row sum.
- `PowerLog`: the log(b) of d(b^e)/de = b^e log(b) reads b = 0 as 1, so the derivative is 0
  there (b^e is 0 nearby), as jax, torch and autograd take it.
- `Held`: a user function's argument written into its body as one value, so that sympy
  cannot merge a fractional power in it with the body's integer powers.
"""

from __future__ import annotations

from dataclasses import replace

import sympy as sp

from .deltas import Term
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


class Held(sp.Function):
    """A user function's argument, written into its body as one value.

    sympy merges `(a^(-1/2))^2` into `1/a`, which is finite where the program's own
    `a^(-1/2)` is not (a < 0): the written-out body would compute a value the program
    does not have, and its derivative (written from `q'`) would still be nan there.
    """

    nargs = 1

    def _einmlp_str(self, printer) -> str:
        return f"({printer._print(self.args[0])})"

    _sympystr = _einmlp_str


class PowerLog(sp.Function):
    """log(b) as a factor of b^e, computed with b = 0 read as 1.

    d(b^e)/de = b^e log(b) is then 0 where b = 0, as in jax, torch and autograd, not 0 * -inf = nan.
    """

    nargs = 1

    def _einmlp_str(self, printer) -> str:
        return f"log({printer._print(self.args[0])})"

    _sympystr = _einmlp_str


def _power_logs(e: sp.Expr, powered: frozenset = frozenset()) -> sp.Expr:
    """`e` with each log(b) that multiplies a power b^e of a varying exponent as PowerLog(b).

    The power is in a product inside `e`, or among `powered`, the bases of its fellow factors;
    the log may be inside the sums and powers such a product holds: b^e (1 + e log(b)) log(b).
    """
    if not e.has(sp.log):
        return e
    if e.is_Mul:
        powered = powered | {f.base for f in e.args if f.is_Pow and not f.exp.is_number}
        return sp.Mul(*[_power_logs(f, powered) for f in e.args])
    if isinstance(e, sp.log) and e.args[0] in powered:
        return PowerLog(_power_logs(e.args[0]))
    if e.is_Add or (e.is_Pow and e.exp.is_Integer and e.exp > 0):  # b^e (1 + e log(b)) log(b)^2 ...
        return e.func(*[_power_logs(a, powered) for a in e.args])
    return e.func(*[_power_logs(a) for a in e.args])


def term_power_logs(term: Term) -> Term:
    """A term's factors and coefficient multiply: a log in one and the power in another pair up."""
    if not any(f.has(sp.log) for f in (term.coeff, *term.factors)):
        return term
    parts = [p for f in (term.coeff, *term.factors) for p in sp.Mul.make_args(f)]
    powered = frozenset(p.base for p in parts if p.is_Pow and not p.exp.is_number)
    return replace(term, coeff=_power_logs(term.coeff, powered),
                   factors=tuple(_power_logs(f, powered) for f in term.factors))
