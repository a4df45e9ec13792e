"""Bind index extents from array shapes, check them, and show the dimension algebra.

Extents come from the arrays only at compile/run time. An index bound to two axes of
different lengths is a `ShapeError` that names the index, both tensors, both axes and
both lengths, as the article's `np.dot(B, A)` mistake deserves.
"""

from __future__ import annotations

import sympy as sp

from .errors import ShapeError
from .symbolic import ESum, Model
from .syntax import BinOp, Call, Expr, Group, Neg, Num, Ref, SumOver

Binding = tuple[int, str, int]  # length, tensor, axis


def _bind_expr(expr: sp.Expr, shapes: dict, env: dict, where: str) -> None:
    if isinstance(expr, ESum):
        outer = {k: env.pop(k) for k in expr.indices if k in env}
        _bind_expr(expr.body, shapes, env, where)
        for k in expr.indices:  # the summed indices are local to the sum
            env.pop(k, None)
        env.update(outer)
        return
    if isinstance(expr, sp.Indexed):
        _bind_entry(expr, shapes, env, where)
        return
    for arg in expr.args:
        _bind_expr(arg, shapes, env, where)


def _bind_entry(entry: sp.Indexed, shapes: dict, env: dict, where: str) -> None:
    name = entry.base.label.name
    shape = shapes[name]
    for axis, i in enumerate(entry.indices):
        size = shape[axis]
        if i.is_Integer:
            if size != 1 or i != 0:
                problem = "is out of range" if i != 0 else "needs an axis of length 1"
                raise ShapeError(f"{name}[{','.join(map(str, entry.indices))}] in `{where}`: axis {axis} of {name} "
                                 f"has length {size}, and the fixed index {i} {problem} (a fixed index is 0, "
                                 "the only entry of a size-1 axis)")
            continue
        if i in env and env[i][0] != size:
            first = env[i]
            raise ShapeError(f"index {i} in `{where}` is bound to {first[1]} axis {first[2]} of length {first[0]} "
                             f"and to {name} axis {axis} of length {size}")
        env.setdefault(i, (size, name, axis))


def _length(shapes: dict, where: tuple[str, int]) -> int:
    return shapes[where[0]][where[1]]


def check_inputs(model: Model, arrays_shapes: dict[str, tuple], needed) -> None:
    """Every needed input is given, with as many axes as the program uses."""
    missing = [n for n in needed if n not in arrays_shapes]
    if missing:
        raise ShapeError(f"missing input array{'s' * (len(missing) > 1)}: {', '.join(missing)}")
    for name in needed:
        rank, shape = model.inputs[name], arrays_shapes[name]
        if len(shape) != rank:
            raise ShapeError(f"{name} is used with {rank} ind{'ex' if rank == 1 else 'ices'} in the program, "
                             f"but the array has shape {tuple(shape)}")


def bind(model: Model, input_shapes: dict[str, tuple]) -> dict[str, tuple[int, ...]]:
    """Shapes of every tensor of the program, checking every statement on the way."""
    return bind_needed(model, input_shapes, list(model.definitions) + list(model.inputs))


def fixed_axes(model: Model) -> dict[tuple[str, int], str]:
    """(tensor, axis) -> a statement that writes that axis with a fixed index 0.

    A fixed index means an axis of length 1 for the whole program (design.md): lowering relies
    on it, and compiled functions check it even where that statement is not computed.
    """
    found: dict[tuple[str, int], str] = {}
    for name, d in model.definitions.items():
        for axis, i in enumerate(d.indices):
            if i.is_Integer:
                found.setdefault((name, axis), d.source)
        for e in d.expr.atoms(sp.Indexed):
            for axis, i in enumerate(e.indices):
                if i.is_Integer:
                    found.setdefault((e.base.label.name, axis), d.source)
    return found


def bind_needed(model: Model, input_shapes: dict[str, tuple], names) -> dict[str, tuple[int, ...]]:
    """Shapes of `names` and of everything they depend on, checking those statements."""
    needed = set(names)
    for name in names:
        needed |= model.uses.get(name, frozenset())
    inputs = [n for n in model.inputs if n in needed]
    check_inputs(model, input_shapes, inputs)
    shapes = {name: tuple(input_shapes[name]) for name in inputs}
    for name, d in model.definitions.items():
        if name in needed:
            env: dict = {}
            _bind_expr(d.expr, shapes, env, d.source)
            shapes[name] = tuple(1 if i.is_Integer else env[i][0] if i in env else _length(shapes, d.extent(i))
                                 for i in d.indices)
    return shapes


# -- dimension algebra, the way seed 000's answer writes it ------------------------------------
def dims(shape) -> str:
    """A shape as seed 000 writes it: [10 x 3]."""
    return "[" + " x ".join(map(str, shape)) + "]" if shape else "[]"


def algebra(expr: Expr, shapes: dict) -> str:
    """`X[b,d] W[d,z] + c[z]` as `[10 x 3][3 x 4] + [4]`."""
    if isinstance(expr, Num):
        return str(expr.value)
    if isinstance(expr, Ref):
        return dims(shapes[expr.name]) if expr.indices else expr.name
    if isinstance(expr, Neg):
        return "-" + algebra(expr.operand, shapes)
    if isinstance(expr, Call):
        return f"{expr.function}({algebra(expr.arg, shapes)})"
    if isinstance(expr, SumOver):
        return f"sum[{','.join(expr.indices)}]({algebra(expr.body, shapes)})"
    if isinstance(expr, Group):
        return f"({algebra(expr.body, shapes)})"
    left, right = algebra(expr.left, shapes), algebra(expr.right, shapes)
    if isinstance(expr, BinOp) and expr.op in "+-":
        return f"{left} {expr.op} {right}"
    if isinstance(expr, BinOp) and expr.op == "^":
        grouped = isinstance(expr.left, (BinOp, Neg))
        return f"({left})^{right}" if grouped else f"{left}^{right}"
    if expr.op == "/":
        return f"{left} / {right}"
    if isinstance(expr.right, BinOp) and expr.right.op in "+-":
        right = f"({right})"
    if isinstance(expr.left, BinOp) and expr.left.op in "+-":
        left = f"({left})"
    return left + right if left.endswith("]") and right.startswith("[") else f"{left} {right}"


def reuse_hint(model: Model) -> str:
    """One name used for two tensors (the request's `W_jk ... W_k0`): say so, for a shape error."""
    uses: dict[str, dict] = {}
    for d in model.definitions.values():
        for entry in sp.preorder_traversal(d.expr):
            if isinstance(entry, sp.Indexed) and entry.base.label.name in model.inputs:
                uses.setdefault(entry.base.label.name, {})[tuple(entry.indices)] = None
    for name, patterns in uses.items():
        patterns = list(patterns)
        for a in patterns:
            for b in patterns:
                if len(a) == len(b) and any(x.is_Integer != y.is_Integer for x, y in zip(a, b)):
                    first, second = (f"{name}[{','.join(map(str, p))}]" for p in (a, b))
                    return (f"{name} is used as {first} and {second}: if these are two layers, give them two "
                            f"names, {name}¹ and {name}² (or {name}1, {name}2)")
    return ""


class ShapeTable(str):
    """The dimension algebra per statement: each statement, then its details indented below it.

    A str, so it prints and compares as text; a notebook shows it as a table.
    """

    rows: tuple[tuple[str, tuple[str, ...]], ...]  # (statement, its detail lines: algebra = shape, ...)

    def __new__(cls, rows):
        rows = tuple((statement, tuple(details)) for statement, details in rows)
        table = super().__new__(cls, "\n".join("\n    ".join((statement, *details)) for statement, details in rows))
        table.rows = rows
        return table

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        from html import escape
        body = "".join(f"<tr><td><code>{escape(statement)}</code></td><td>"
                       + "<br>".join(f"<code>{escape(d)}</code>" for d in details) + "</td></tr>"
                       for statement, details in self.rows)
        return f"<table><tr><th>statement</th><th>dimensions</th></tr>{body}</table>"
