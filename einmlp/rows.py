"""Which plans may run on blocks of rows, proven from their index forms.

On a batch of 100,000 rows a plan makes one pass over batch-sized arrays per statement,
and its temporaries do not stay in the processor's caches. Run on blocks of a few
thousand rows, with the blocks' gradients added, the same statements find their operands
in cache (measured: benchmarks/compare.py). That is right only when the computation
separates over the rows, and whether it does is read here from the index forms, never
guessed from values (a plan that normalises over the batch agrees with its blocked run on
degenerate data).

Axes are grouped into classes: two axes are in one class when one index runs over both
(an entry X[i,j] and Y[i,0] put axis 0 of X and of Y together). For a class K, every
tensor the plan computes is one of:

- `GLOBAL`: it does not depend on anything along K (the weights);
- `ROWS`: it has one axis in K, and each of its rows reads only the same row of what it
  reads (a forward activation, an adjoint of one);
- `PARTIAL`: it has no axis in K, and it is linear in sums over K of `ROWS` and `GLOBAL`
  values (a gradient, the loss): the sum of its blocks' values is its value.

Anything else (a mean taken inside a row, a softmax over the batch, a log of the loss) is
`MIXED`, and a plan that computes a `MIXED` tensor, or reads a `PARTIAL` one other than
linearly, runs whole. A plan's outputs are then put together from the blocks: `ROWS` by
rows, `PARTIAL` by adding, `GLOBAL` from any block.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from .symbolic import ESum, Extent, Model

GLOBAL, ROWS, PARTIAL, MIXED = "global", "rows", "partial", "mixed"

Axis = tuple[str, int]  # (tensor, axis)


@dataclass(frozen=True, slots=True)
class Blocking:
    """How to run a plan on blocks of rows of one axis class."""

    inputs: tuple[int | None, ...]  # per plan input: the axis to cut into blocks, or None (read whole)
    outputs: dict[str, tuple[str, int | None]]  # result key -> (ROWS, axis) | (PARTIAL, None) | (GLOBAL, None)


class _Classes:
    """Union-find over (tensor, axis): the axes one index runs over are one class."""

    def __init__(self):
        self.parent: dict[Axis, Axis] = {}

    def find(self, a: Axis) -> Axis:
        self.parent.setdefault(a, a)
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: Axis, b: Axis) -> None:
        self.parent[self.find(a)] = self.find(b)

    def link(self, expr: sp.Expr, env: dict) -> None:
        """Join the axes each index of `expr` runs over; `env` maps bound indices to an axis."""
        if isinstance(expr, ESum):
            inner = dict(env)
            for i, extent in zip(expr.indices, expr.extents):
                inner[i] = (extent.name, extent.axis)
            self.link(expr.body, inner)
        elif isinstance(expr, sp.Indexed):
            for a, i in enumerate(expr.indices):
                if i.is_Symbol:
                    self._join(i, (expr.base.label.name, a), env)
        elif isinstance(expr, sp.KroneckerDelta):
            symbols = [i for i in expr.args if i.is_Symbol]
            if len(symbols) == 2 and all(i in env for i in symbols):
                self.union(env[symbols[0]], env[symbols[1]])
        elif not isinstance(expr, Extent):
            for arg in expr.args:
                self.link(arg, env)

    def _join(self, i: sp.Symbol, axis: Axis, env: dict) -> None:
        if i in env:
            self.union(env[i], axis)
        else:
            env[i] = axis


def _lhs_env(name: str, indices) -> dict:
    return {i: (name, p) for p, i in enumerate(indices) if i.is_Symbol}


class Separability:
    """The axis classes of a model and the forms lowered from it, and which classes separate."""

    def __init__(self, model: Model, forms: dict[str, tuple], shifts: dict[str, int]):
        """`forms`: variable -> (expression, {free index: (tensor, axis)}, free pattern) per lowered derivative."""
        self.model, self.forms, self.shifts = model, forms, shifts
        self.classes = _Classes()
        for name, d in model.definitions.items():
            env = _lhs_env(name, d.indices)
            for p, (i, extent) in enumerate(zip(d.indices, d.extents)):
                if i.is_Symbol and extent is not None:
                    self.classes.union((name, p), (extent.name, extent.axis))
            self.classes.link(d.expr, env)
        for expr, bindings, _ in forms.values():
            self.classes.link(expr, dict(bindings))

    def blocking(self, inputs: tuple[str, ...], outputs: dict[str, str], defined: set[str],
                 variables: dict[str, str]) -> tuple[Blocking, ...]:
        """One `Blocking` per axis class of the inputs over which the whole plan separates."""
        candidates = dict.fromkeys(self.classes.find((n, a)) for n in inputs for a in range(self.model.rank(n)))
        by_variable = {v: n for n, v in variables.items()}
        found = []
        for k in candidates:
            rule = _Judge(self, k).rule(inputs, outputs, defined, by_variable)
            if rule is not None:
                found.append(rule)
        return tuple(found)


class _Judge:
    """The kinds of tensors and expressions for one axis class `k`."""

    def __init__(self, owner: Separability, k: Axis):
        self.owner, self.model, self.k = owner, owner.model, k
        self.kinds: dict[str, tuple[str, int | None]] = {}

    def in_k(self, axis: Axis) -> bool:
        return self.owner.classes.find(axis) == self.k

    def k_axes(self, name: str, rank: int) -> list[int]:
        return [a for a in range(rank) if self.in_k((name, a))]

    def rule(self, inputs, outputs, defined, by_variable) -> Blocking | None:
        if any(self.in_k((name, axis)) for name, axis in self.owner.shifts.items()):
            return None  # a softmax over the batch: its row maximum is not per block
        cut = []
        for name in inputs:
            kind, axis = self.tensor(name)
            if kind == MIXED:
                return None
            cut.append(axis if kind == ROWS else None)
        if all(axis is None for axis in cut):
            return None
        for name in defined:
            if name in self.model.definitions and self.tensor(name)[0] == MIXED:
                return None
        put = {}
        for key, var in outputs.items():
            if var in self.owner.forms:
                expr, bindings, free = self.owner.forms[var]
                kind, axis = self.form(expr, dict(bindings), list(free))
            elif var in by_variable and by_variable[var] in defined:
                kind, axis = self.tensor(by_variable[var])
            else:
                return None
            if kind == MIXED:
                return None
            put[key] = (kind, axis)
        return Blocking(tuple(cut), put)

    def tensor(self, name: str) -> tuple[str, int | None]:
        """(kind, the axis in k for ROWS) of an input or a definition."""
        if name in self.kinds:
            return self.kinds[name]
        self.kinds[name] = (MIXED, None)  # a cycle cannot happen in a program; if it did, refuse
        if name in self.model.definitions:
            d = self.model.definitions[name]
            found = self.form(d.expr, _lhs_env(name, d.indices), list(d.indices))
        else:
            axes = self.k_axes(name, self.model.rank(name))
            found = (ROWS, axes[0]) if len(axes) == 1 else (GLOBAL, None) if not axes else (MIXED, None)
        self.kinds[name] = found
        return found

    def form(self, expr: sp.Expr, env: dict, free: list) -> tuple[str, int | None]:
        """The kind of a tensor computed as `expr` over the free indices `free` (Integer 0 for size-1 axes)."""
        rows = [p for p, i in enumerate(free) if i.is_Symbol and i in env and self.in_k(env[i])]
        if len(rows) > 1:
            return MIXED, None
        if any(i.is_Symbol and i not in env for i in free):
            return MIXED, None
        r = free[rows[0]] if rows else None
        kind = self.expr(expr, env, r)
        if rows:
            return (ROWS, rows[0]) if kind in (ROWS, GLOBAL) else (MIXED, None)
        return (kind, None) if kind in (GLOBAL, PARTIAL) else (MIXED, None)

    def expr(self, e: sp.Expr, env: dict, r) -> str:
        """GLOBAL, ROWS (row r of everything it reads along k), PARTIAL (linear in sums over k) or MIXED."""
        if e.is_Number:
            return GLOBAL
        if isinstance(e, Extent):
            return PARTIAL if self.in_k((e.name, e.axis)) else GLOBAL  # a count of rows: a sum over k of 1
        if isinstance(e, sp.Indexed):
            return self.entry(e, r)
        if isinstance(e, sp.Symbol):
            if e in env:  # an index read as a value
                return MIXED if self.in_k(env[e]) else GLOBAL
            name = e.name
            if name in self.model.definitions or name in self.model.inputs:
                kind, _ = self.tensor(name)
                return kind
            return GLOBAL
        if isinstance(e, sp.KroneckerDelta):
            if any(a.is_Symbol and a not in env for a in e.args):
                return MIXED
            if any(a.is_Symbol and self.in_k(env[a]) for a in e.args):
                return ROWS if all(a == r for a in e.args) else MIXED
            return GLOBAL
        if isinstance(e, ESum):
            return self.sum(e, env, r)
        parts = [self.expr(a, env, r) for a in e.args]
        if MIXED in parts:
            return MIXED
        if isinstance(e, sp.Add):
            if PARTIAL in parts:
                return PARTIAL if all(p == PARTIAL for p in parts) else MIXED
            return ROWS if ROWS in parts else GLOBAL
        if isinstance(e, sp.Mul):
            if PARTIAL in parts:
                return PARTIAL if parts.count(PARTIAL) == 1 and set(parts) <= {PARTIAL, GLOBAL} else MIXED
            return ROWS if ROWS in parts else GLOBAL
        # a power, a function or anything else: not linear
        if PARTIAL in parts:
            return MIXED
        return ROWS if ROWS in parts else GLOBAL

    def entry(self, e: sp.Indexed, r) -> str:
        name = e.base.label.name
        kind, axis = self.tensor(name)
        if kind == ROWS:
            return ROWS if r is not None and e.indices[axis] == r else MIXED
        return kind

    def sum(self, e: ESum, env: dict, r) -> str:
        inner = dict(env)
        over_k = []
        for i, extent in zip(e.indices, e.extents):
            inner[i] = (extent.name, extent.axis)
            if self.in_k(inner[i]):
                over_k.append(i)
        if not over_k:
            return self.expr(e.body, inner, r)
        if len(over_k) > 1:
            return MIXED
        body = self.expr(e.body, inner, over_k[0])
        return PARTIAL if body in (ROWS, GLOBAL) else MIXED
