"""The Einstein rules of the language: make every sum explicit, check names and ranks.

Rules (design §1): an index on the left is never summed; an index in two or more factors
of one product is summed over that product; an index that occurs once is elementwise in
its term and, if it is not on the left, summed over the whole right-hand side; `sum[...]`
sums explicitly; terms of `+`/`-` must have nested sets of free indices (the smaller one
is broadcast), and an index summed in one term but free in another is ambiguous.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from .errors import EinmlpError, IndexNotationError, ParseError, UnknownNameError
from .functions import BUILTINS, near_builtin
from .syntax import BinOp, Call, Expr, FunctionDef, Group, Neg, Num, Program, Ref, Statement, SumOver

# reductions people reach for; einmlp's functions are elementwise, so each is refused with its spelling
REDUCTIONS = {
    "sum": "sum[i](x[i])", "mean": "sum[i](x[i]) / N with N given as an input, or a statement per mean",
    "max": "a smooth stand-in such as log(sum[i](exp(x[i])))", "min": "-log(sum[i](exp(-x[i])))",
    "norm": "sqrt(x[i] x[i])", "logsumexp": "log(sum[i](exp(x[i])))",
    "softmax": "P[b,k] = exp(Z[b,k]) / sum[j](exp(Z[b,j]))", "prod": "exp(sum[i](log(x[i])))",
    "dot": "x[i] y[i]", "matmul": "X[i,j] W[j,k]", "argmax": "no differentiable spelling",
    "argmin": "no differentiable spelling", "var": "sum[i]((x[i] - m)^2) / N", "std": "sqrt of a variance",
}


@dataclass(frozen=True, slots=True)
class Checked:
    """A statement whose right-hand side has every sum explicit."""

    statement: Statement
    expr: Expr


@dataclass(frozen=True, slots=True)
class CheckedProgram:
    statements: tuple[Checked, ...]
    functions: tuple[FunctionDef, ...]
    inputs: dict[str, int]    # name -> rank, in order of first use
    targets: dict[str, int]   # name -> rank, in order of assignment
    notes: tuple[str, ...] = ()  # warnings worth showing: names near a built-in, ...


@dataclass(frozen=True, slots=True)
class _Info:
    free: tuple[str, ...]     # unsummed index names, in order of first occurrence
    summed: frozenset[str]    # names summed implicitly somewhere inside


def _ordered_union(*groups) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for group in groups:
        seen.update(dict.fromkeys(group))
    return tuple(seen)


def _factors(expr: Expr) -> list[Expr]:
    """Flatten a chain of products (through parentheses) into its factors."""
    if isinstance(expr, BinOp) and expr.op in "*/":
        right = _factors(expr.right)
        if expr.op == "/":
            right = [BinOp("^", r, Num(Fraction(-1), r.span), r.span) for r in right]
        return _factors(expr.left) + right
    return [expr]


def _terms(expr: Expr) -> list[Expr]:
    """Flatten a chain of + and - into terms (a subtracted term becomes Neg)."""
    if isinstance(expr, BinOp) and expr.op in "+-":
        right = expr.right if expr.op == "+" else Neg(expr.right, expr.span)
        return _terms(expr.left) + [right]
    return [expr]


def _rebuild(parts: list[Expr], op: str) -> Expr:
    result = parts[0]
    for part in parts[1:]:
        result = BinOp(op, result, part, part.span)
    return result


class _Analyzer:
    def __init__(self, where: str):
        self.where = where

    def error(self, message: str) -> IndexNotationError:
        return IndexNotationError(f"{message} (in `{self.where}`)")

    def run(self, expr: Expr, protected: frozenset[str]) -> tuple[Expr, _Info]:
        if isinstance(expr, Group):  # parentheses scope the product inside, as a call does
            return self.run(expr.body, protected)
        if isinstance(expr, Num):
            return expr, _Info((), frozenset())
        if isinstance(expr, Ref):
            return expr, _Info(_ordered_union([i for i in expr.indices if isinstance(i, str)]), frozenset())
        if isinstance(expr, Neg):
            operand, info = self.run(expr.operand, protected)
            return Neg(operand, expr.span), info
        if isinstance(expr, Call):
            arg, info = self.run(expr.arg, protected)
            return Call(expr.function, arg, expr.span), info
        if isinstance(expr, SumOver):
            return self.explicit_sum(expr, protected)
        if expr.op in "+-":
            return self.add(expr, protected)
        if expr.op == "^":
            if _tower(expr) > MAX_TOWER:
                raise self.error(f"a tower of more than {MAX_TOWER} powers with tensors in their exponents is "
                                 "too deep to derive; name some of its levels as statements")
            base, b = self.run(expr.left, protected)
            exponent, e = self.run(expr.right, protected)
            return BinOp("^", base, exponent, expr.span), _Info(_ordered_union(b.free, e.free), b.summed | e.summed)
        return self.product(expr, protected)

    def product(self, expr: Expr, protected: frozenset[str]) -> tuple[Expr, _Info]:
        results = [self.run(f, protected) for f in _factors(expr)]
        counts: dict[str, int] = {}
        for _, info in results:
            for index in info.free:
                counts[index] = counts.get(index, 0) + 1
        summed = tuple(i for i, n in counts.items() if n > 1 and i not in protected)
        free = tuple(i for i in counts if i not in summed)
        inner = frozenset().union(*(info.summed for _, info in results)) | frozenset(summed)
        body = _rebuild([e for e, _ in results], "*")
        return (SumOver(summed, body, expr.span) if summed else body), _Info(free, inner)

    def add(self, expr: Expr, protected: frozenset[str]) -> tuple[Expr, _Info]:
        results = [self.run(t, protected) for t in _terms(expr)]
        free_sets = [set(info.free) for _, info in results]
        for a, (_, ia) in enumerate(results):
            for b in range(len(results)):
                clash = ia.summed & free_sets[b]
                if a != b and clash:
                    index = sorted(clash)[0]
                    raise self.error(
                        f"index {index} is summed in one term but free in another, which is ambiguous; "
                        f"write the sum explicitly, e.g. sum[{index}](...)")
        union = set().union(*free_sets)
        if union not in free_sets:  # every term broadcasts against the widest one
            (_, ia), (_, ib) = next(((x, y) for x in results for y in results
                                     if not (set(x[1].free) <= set(y[1].free) or set(y[1].free) <= set(x[1].free))))
            raise self.error(f"terms with free indices [{','.join(ia.free)}] and [{','.join(ib.free)}] cannot be "
                             "added: one set must contain the other, or a term must have all of them")
        free = _ordered_union(*(info.free for _, info in results))
        return _rebuild([e for e, _ in results], "+"), _Info(free, frozenset().union(*(i.summed for _, i in results)))

    def explicit_sum(self, expr: SumOver, protected: frozenset[str]) -> tuple[Expr, _Info]:
        if len(set(expr.indices)) != len(expr.indices):
            raise self.error(f"sum[{','.join(expr.indices)}] names an index twice")
        for index in expr.indices:
            if index in protected:
                raise self.error(f"index {index} is on the left-hand side or already summed, "
                                 f"so sum[{index}] cannot sum it again")
        body, info = self.run(expr.body, protected | frozenset(expr.indices))
        for index in expr.indices:
            if index not in info.free:
                raise self.error(f"sum[{index}] sums an index that does not occur in its body")
        free = tuple(i for i in info.free if i not in expr.indices)
        return SumOver(expr.indices, body, expr.span), _Info(free, info.summed)


def _tower(expr: Expr) -> int:
    """How many powers with a tensor in the exponent sit inside one another along the exponents."""
    height = 0
    while isinstance(expr, BinOp) and expr.op == "^" and any(isinstance(n, Ref) for n in _refs(expr.right)):
        height, expr = height + 1, expr.right
        while isinstance(expr, (Group, Neg)):
            expr = expr.body if isinstance(expr, Group) else expr.operand
    return height


def _check_lhs(statement: Statement) -> None:
    names = [i for i in statement.indices if isinstance(i, str)]
    for index in names:
        if names.count(index) > 1:
            raise IndexNotationError(f"index {index} repeats on the left-hand side of {statement.name} "
                                     f"(in `{statement.source}`)")
    for index in statement.indices:
        if isinstance(index, int) and index != 0:
            raise IndexNotationError(f"a number on the left-hand side declares a size-1 axis and must be 0, "
                                     f"not {index} (in `{statement.source}`)")


def _names(expr: Expr) -> list[str]:
    """Index names of every reference in `expr`, with repeats."""
    return [i for node in _refs(expr) if isinstance(node, Ref) for i in node.indices if isinstance(i, str)]


def _free_names(expr: Expr) -> list[str]:
    """Index names of `expr` not bound by a sum inside it."""
    if isinstance(expr, SumOver):
        return [i for i in _free_names(expr.body) if i not in expr.indices]
    if isinstance(expr, Ref):
        return [i for i in expr.indices if isinstance(i, str)]
    children = [getattr(expr, f) for f in ("left", "right", "operand", "arg", "body") if hasattr(expr, f)]
    return [i for child in children for i in _free_names(child)]


def _renamed(expr: Expr, mapping: dict[str, str]) -> Expr:
    if isinstance(expr, Ref):
        return Ref(expr.name, tuple(mapping.get(i, i) if isinstance(i, str) else i for i in expr.indices), expr.span)
    if isinstance(expr, SumOver):
        return SumOver(tuple(mapping.get(i, i) for i in expr.indices), _renamed(expr.body, mapping), expr.span)
    if isinstance(expr, (Neg, Group)):
        field = "operand" if isinstance(expr, Neg) else "body"
        return type(expr)(_renamed(getattr(expr, field), mapping), expr.span)
    if isinstance(expr, Call):
        return Call(expr.function, _renamed(expr.arg, mapping), expr.span)
    if isinstance(expr, BinOp):
        return BinOp(expr.op, _renamed(expr.left, mapping), _renamed(expr.right, mapping), expr.span)
    return expr


def _unshadow(expr: Expr, outside: list[str], taken: set[str]) -> Expr:
    """Rename a sum's index where the same name is used outside it: `y[nu] + sum[nu](z[nu])`.

    The sum binds its own index, so `sum[nu2](z[nu2])` means the same and no later stage can
    mix the two up.
    """
    if isinstance(expr, SumOver):
        clash = [i for i in expr.indices if i in outside]
        mapping = {}
        for i in clash:
            k = 2
            while f"{i}{k}" in taken:
                k += 1
            mapping[i] = f"{i}{k}"
            taken.add(mapping[i])
        body = _renamed(expr.body, mapping)
        indices = tuple(mapping.get(i, i) for i in expr.indices)
        return SumOver(indices, _unshadow(body, outside + list(indices), taken), expr.span)
    if isinstance(expr, BinOp):
        left = _unshadow(expr.left, outside + _free_names(expr.right), taken)
        return BinOp(expr.op, left, _unshadow(expr.right, outside + _free_names(left), taken), expr.span)
    if isinstance(expr, (Neg, Group)):
        field = "operand" if isinstance(expr, Neg) else "body"
        return type(expr)(_unshadow(getattr(expr, field), outside, taken), expr.span)
    if isinstance(expr, Call):
        return Call(expr.function, _unshadow(expr.arg, outside, taken), expr.span)
    return expr


def check_statement(statement: Statement) -> Checked:
    """Apply the summation rules to one statement."""
    _check_lhs(statement)
    lhs = tuple(i for i in statement.indices if isinstance(i, str))
    expr, info = _Analyzer(statement.source).run(statement.expr, frozenset(lhs))
    for index in lhs:
        if index not in info.free:
            raise IndexNotationError(f"index {index} on the left of {statement.name} never occurs free on the right "
                                     f"(in `{statement.source}`)")
    rest = tuple(i for i in info.free if i not in lhs)
    if rest:
        expr = SumOver(rest, expr, statement.expr.span)
    expr = _unshadow(expr, list(lhs), set(_names(expr)) | set(lhs))
    return Checked(statement, expr)


def _refs(expr: Expr):
    if isinstance(expr, Ref):
        yield expr
    elif isinstance(expr, (Neg,)):
        yield from _refs(expr.operand)
    elif isinstance(expr, Call):
        yield expr
        yield from _refs(expr.arg)
    elif isinstance(expr, SumOver):
        yield expr
        yield from _refs(expr.body)
    elif isinstance(expr, Group):
        yield from _refs(expr.body)
    elif isinstance(expr, BinOp):
        yield from _refs(expr.left)
        yield from _refs(expr.right)


MAX_FUNCTION_DEPTH = 30  # user functions calling user functions, inside one another
MAX_TOWER = 8  # powers whose exponents hold tensors, inside one another: x^x^x^... derives quadratically
MAX_FUNCTION_SIZE = 1000  # nodes of a definition with every call written out (f(f(x)) doubles it)


def _written(expr: Expr, param: str, sizes: dict[str, tuple[int, int]]) -> tuple[int, int]:
    """(nodes, uses of `param`) of `expr` with every call of a defined function written out.

    f(x) = x f0(x) uses x twice, so f(f(x)) copies f's argument twice: sizes multiply.
    """
    if isinstance(expr, Ref):
        return (0, 1) if expr.name == param and not expr.indices else (1, 0)
    if isinstance(expr, Num):
        return 1, 0
    if isinstance(expr, Call):
        nodes, uses = _written(expr.arg, param, sizes)
        if expr.function in sizes:
            body, body_uses = sizes[expr.function]
            return body + body_uses * nodes + 1, body_uses * uses
        return nodes + 1, uses
    children = [getattr(expr, f) for f in ("left", "right", "operand", "body") if hasattr(expr, f)]
    parts = [_written(c, param, sizes) for c in children]
    return 1 + sum(n for n, _ in parts), sum(u for _, u in parts)


MAX_EXPONENT = 1000  # |p| of a constant exponent: sympy writes (3 y)^p as 3^p y^p, computing 3^p exactly
MAX_RAISED = 10_000  # a constant raised, through powers of powers, to at most this (sympy computes it exactly)


@dataclass(frozen=True, slots=True)
class _Raised:
    """How far a constant exponent chain raises things, in an expression with its calls written out.

    sympy computes a constant under powers exactly: (x/2)^4 is x^4/16, and bringing a sum over
    a common denominator multiplies the exponents on the way, so f(f(f(x))) with
    f(x) = (x/2)^4 + 1 asks for 2^64. `param`: the largest product of exponents from the root to
    the parameter, through which a caller's constants are raised too; `number`: to a constant
    other than 0 and +-1; `most`: the largest anywhere inside. A built-in call (sin, exp) is a
    wall: sympy leaves its argument alone.
    """
    param: float = 0.0
    number: float = 0.0
    most: float = 0.0


def _exponent_size(expr: Expr) -> float | None:
    """|value| of a constant exponent (inf if it overflows), None if it holds a tensor or divides by zero."""
    if isinstance(expr, Num):
        return abs(float(expr.value))
    if isinstance(expr, (Group, Neg)):
        return _exponent_size(expr.body if isinstance(expr, Group) else expr.operand)
    if isinstance(expr, BinOp):
        left, right = _exponent_size(expr.left), _exponent_size(expr.right)
        if left is None or right is None:
            return None
        try:
            return abs({"+": lambda: left + right, "-": lambda: left - right, "*": lambda: left * right,
                        "/": lambda: left / right, "^": lambda: left ** right}[expr.op]())
        except ZeroDivisionError:
            return None
        except OverflowError:
            return float("inf")
    return None


def _raised(expr: Expr, param: str | None, gains: dict[str, _Raised]) -> _Raised:
    if isinstance(expr, Ref):
        return _Raised(param=1.0 if expr.name == param and not expr.indices else 0.0)
    if isinstance(expr, Num):
        heavy = 0.0 if expr.value in (0, 1, -1) else 1.0
        return _Raised(number=heavy, most=heavy)
    if isinstance(expr, Call):
        arg = _raised(expr.arg, param, gains)
        g = gains.get(expr.function)
        if g is None:  # a built-in or abstract function: its argument is raised no further
            return _Raised(most=arg.most)
        number = max(g.number, g.param * arg.number)
        return _Raised(g.param * arg.param, number, max(g.most, arg.most, number))
    if isinstance(expr, BinOp) and expr.op == "^" and (size := _exponent_size(expr.right)) is not None:
        base = _raised(expr.left, param, gains)
        gain = max(1.0, size) if size <= MAX_EXPONENT else 1.0  # a larger one is refused with its own message
        number = gain * base.number
        return _Raised(gain * base.param, number, max(base.most, number))
    children = [_raised(getattr(expr, f), param, gains) for f in ("left", "right", "operand", "body")
                if hasattr(expr, f)]
    return _Raised(max((c.param for c in children), default=0.0), max((c.number for c in children), default=0.0),
                   max((c.most for c in children), default=0.0))


def _check_functions(functions: tuple[FunctionDef, ...]) -> dict[str, _Raised]:
    """Check the definitions in order; what each one raises its argument and constants to, by name."""
    defined: set[str] = set()
    depth: dict[str, int] = {}
    sizes: dict[str, tuple[int, int]] = {}
    gains: dict[str, _Raised] = {}
    for definition in functions:
        if definition.name in BUILTINS or definition.name == "sum":
            raise UnknownNameError(f"{definition.name} is a built-in function and cannot be redefined "
                                   f"(in `{definition.source}`)")
        if definition.name in defined:
            raise UnknownNameError(f"function {definition.name} is defined twice (in `{definition.source}`)")
        for node in _refs(definition.body):
            if isinstance(node, Call) and node.function == definition.name:
                raise UnknownNameError(f"function {definition.name} calls itself (in `{definition.source}`)")
            if isinstance(node, Call) and node.function not in BUILTINS and node.function not in defined:
                raise UnknownNameError(f"function {definition.name} calls {node.function}, which is not defined "
                                       f"before it (in `{definition.source}`)")
            if isinstance(node, SumOver):
                raise IndexNotationError(f"sum[...] cannot appear in the definition of {definition.name}: "
                                         f"functions are elementwise (in `{definition.source}`)")
            if isinstance(node, Ref) and (node.indices or node.name != definition.param):
                raise UnknownNameError(f"the body of {definition.name}({definition.param}) may only use "
                                       f"{definition.param}, not {node.name} (in `{definition.source}`)")
        calls = [depth.get(n.function, 0) for n in _refs(definition.body) if isinstance(n, Call)]
        depth[definition.name] = 1 + max(calls, default=0)
        sizes[definition.name] = _written(definition.body, definition.param, sizes)
        if sum(sizes[definition.name]) > MAX_FUNCTION_SIZE:
            raise EinmlpError(f"function {definition.name} grows to more than {MAX_FUNCTION_SIZE} operations "
                                   f"when its calls are written out; write some of them as statements "
                                   f"(in `{definition.source}`)")
        gains[definition.name] = _raised(definition.body, definition.param, gains)
        if gains[definition.name].most > MAX_RAISED:
            raise EinmlpError(f"function {definition.name} raises a constant to a power of about "
                              f"{gains[definition.name].most:.3g} when its calls are written out (at most "
                              f"{MAX_RAISED:,}), through powers of powers that sympy computes exactly; write "
                              f"some of them as statements (in `{definition.source}`)")
        if depth[definition.name] > MAX_FUNCTION_DEPTH:
            raise EinmlpError(f"function {definition.name} calls functions nested more than {MAX_FUNCTION_DEPTH} "
                                   f"deep; write some of them as statements (in `{definition.source}`)")
        defined.add(definition.name)
    return gains


def _check_calls_are_not_tensors(program: Program, inputs: dict, targets: dict) -> None:
    for statement in program.statements:
        for node in _refs(statement.expr):
            if isinstance(node, Call) and (node.function in inputs or node.function in targets):
                raise UnknownNameError(f"{node.function} is a tensor but is called like a function "
                                       f"{node.function}(...); write {node.function} * (...) to multiply "
                                       f"(in `{statement.source}`)")


def _abstract_notes(program: Program, defined: set[str]) -> tuple[str, ...]:
    """Refuse undefined reductions; note abstract functions whose names are near a built-in."""
    notes: dict[str, None] = {}
    bodies = [(s.expr, s.source) for s in program.statements] + [(f.body, f.source) for f in program.functions]
    for body, source in bodies:
        for node in _refs(body):
            if not isinstance(node, Call) or node.function in BUILTINS or node.function in defined:
                continue
            if node.function in REDUCTIONS:
                raise UnknownNameError(f"{node.function}(...) is not a function of einmlp: functions are elementwise, "
                                       f"and reductions are written with sums, e.g. {REDUCTIONS[node.function]} "
                                       f"(in `{source}`)")
            near = near_builtin(node.function)
            if near:
                notes[f"{node.function} is not a built-in, so it is an abstract function; did you mean "
                      f"{near}? (in `{source}`)"] = None
    return tuple(notes)


def check_program(program: Program) -> CheckedProgram:
    """Check names, ranks and summation of a whole program."""
    functions = _check_functions(program.functions)
    assigned_at = {s.name: n for n, s in reversed(list(enumerate(program.statements)))}
    inputs: dict[str, int] = {}
    targets: dict[str, int] = {}
    checked = []
    for number, statement in enumerate(program.statements):
        where = f"in `{statement.source}`"
        if statement.name in targets:
            raise UnknownNameError(f"{statement.name} is assigned twice ({where})")
        if statement.name in inputs:
            raise UnknownNameError(f"{statement.name} is used before it is assigned ({where})")
        if statement.name in functions or statement.name in BUILTINS:
            raise UnknownNameError(f"{statement.name} is a function and cannot be assigned ({where})")
        for node in _refs(statement.expr):
            if isinstance(node, SumOver):
                continue
            if isinstance(node, Call):
                if node.function in targets or node.function in inputs:
                    raise UnknownNameError(f"{node.function} is a tensor, not a function ({where})")
                continue
            if node.name in functions or node.name in BUILTINS:
                raise UnknownNameError(f"{node.name} is a function; call it as {node.name}(...) ({where})")
            if assigned_at.get(node.name, -1) >= number:
                raise UnknownNameError(f"{node.name} is used before it is assigned ({where})")
            known = targets.get(node.name, inputs.get(node.name))
            if known is None:
                inputs[node.name] = len(node.indices)
            elif known != len(node.indices):
                raise IndexNotationError(f"{node.name} has {known} indices but is used with {len(node.indices)} "
                                         f"here: {node.name}[{','.join(map(str, node.indices))}] ({where})")
        if (most := _raised(statement.expr, None, functions).most) > MAX_RAISED:
            raise EinmlpError(f"the statement raises a constant to a power of about {most:.3g} when its function "
                              f"calls are written out (at most {MAX_RAISED:,}), through powers of powers that "
                              f"sympy computes exactly; name some of the inner results as statements ({where})")
        checked.append(check_statement(statement))
        targets[statement.name] = len(statement.indices)
    if not checked:
        raise ParseError("the program has no statements")
    _check_calls_are_not_tensors(program, inputs, targets)
    notes = _abstract_notes(program, functions)
    return CheckedProgram(tuple(checked), program.functions, inputs, targets, notes)
