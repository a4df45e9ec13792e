"""The indexed model in sympy: one definition per statement, intermediates kept by name.

Tensor entries are `sympy.Indexed`, scalars `Symbol`, sums are explicit `ESum` nodes
that also record where each summed index gets its extent. Contractions that sit inside a
nonlinear context (a function argument, a power's base) are lifted into named
intermediates, as the article names A, B and C: that keeps every right-hand side a sum
of products of elementwise factors, which both the chain rule and einsum understand.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from string import ascii_uppercase

import sympy as sp
from sympy.core.symbol import Str

from .errors import NumericError
from .functions import PARAM, FunctionTable, UserFunction
from .render import index_str
from .summation import MAX_EXPONENT, CheckedProgram
from .syntax import Call, Expr, Group, Neg, Num, Ref, SumOver

MAX_MAGNITUDE = 300  # decimal digits of a constant: its value must stay a finite float
MAX_ROOT_DEGREE = 10 ** 100  # q of a constant power b^(p/q) of a number b: 2^1e-300 hangs sympy, 2^1e-100 does not
# Digits of a root's base, beyond its factors 2 and 5 (a decimal's powers of ten): sympy factors the base to
# take the root, 0.02 s at 300 digits, 0.4 s at 1,000 and 2.8 s at 2,000 (1.61 + 1e-8000 ran for minutes)
MAX_ROOT_DIGITS = 400
MAX_NESTING = 8     # a statement whose functions and powers nest deeper is named one level at a time


def index(name: str) -> sp.Symbol:
    """The sympy symbol of an index name."""
    return sp.Symbol(name, integer=True)


@functools.lru_cache(maxsize=4096)
def base(name: str) -> sp.IndexedBase:
    """A tensor's IndexedBase, made once: sympy deduces its assumptions anew for each one made."""
    return sp.IndexedBase(name, real=True)


def tensor(name: str, rank: int) -> sp.Basic:
    """The sympy object for a tensor: an IndexedBase, or a real Symbol for a scalar."""
    return base(name) if rank else sp.Symbol(name, real=True)


def ref(name: str, indices) -> sp.Expr:
    """The entry `name[indices]` (a plain symbol when there are no indices)."""
    indices = tuple(index(i) if isinstance(i, str) else sp.Integer(i) for i in indices)
    return base(name)[indices] if indices else sp.Symbol(name, real=True)


class Extent(sp.Expr):
    """The length of axis `axis` of tensor `name`, labelled by the index it counts."""

    is_commutative = True
    is_extended_real = True  # a length: sympy may ask, e.g. when differentiating sign(N_i x)
    is_positive = True

    def __new__(cls, label, name, axis):
        # sympy rebuilds nodes from their args (already Str), so accept both spellings
        def text(s):
            return s if isinstance(s, Str) else Str(s)
        return sp.Expr.__new__(cls, text(label), text(name), sp.Integer(axis))

    label = property(lambda self: self.args[0].name)
    name = property(lambda self: self.args[1].name)
    axis = property(lambda self: int(self.args[2]))
    free_symbols = property(lambda self: set())

    def _eval_derivative(self, s):
        return sp.S.Zero

    def _sympystr(self, printer):
        return f"N_{self.label}"


class ESum(sp.Expr):
    """An explicit sum of `body` over `indices`; `extents` say where each length comes from."""

    is_commutative = True

    def __new__(cls, body, indices, extents):
        if body == 0:
            return sp.S.Zero
        if not indices:
            return body
        return sp.Expr.__new__(cls, body, sp.Tuple(*indices), sp.Tuple(*extents))

    body = property(lambda self: self.args[0])
    indices = property(lambda self: tuple(self.args[1]))
    extents = property(lambda self: tuple(self.args[2]))

    def _eval_derivative(self, s):
        return ESum(self.body.diff(s), self.indices, self.extents)

    def _eval_is_extended_real(self):
        return self.body.is_extended_real

    def _sympystr(self, printer):
        return f"sum[{','.join(map(str, self.indices))}]({printer._print(self.body)})"


class Partial(sp.Expr):
    """The not-yet-expanded derivative d of[..] / d wrt[..], a link of the chain rule."""

    is_commutative = True

    def __new__(cls, of, wrt):
        return sp.Expr.__new__(cls, of, wrt)

    def _eval_derivative(self, s):
        raise NotImplementedError("a Partial is expanded before it is differentiated again")

    def _sympystr(self, printer):
        return f"d{printer._print(self.args[0])}/d{printer._print(self.args[1])}"


def free_indices(expr: sp.Basic, bound: frozenset = frozenset()) -> tuple[sp.Symbol, ...]:
    """Index symbols of `expr` not bound by an inner ESum, in order of first occurrence."""
    return tuple(i for i in _free(expr) if i not in bound)


@functools.lru_cache(maxsize=1 << 16)
def _free(e: sp.Basic) -> tuple[sp.Symbol, ...]:
    """free_indices of one node, remembered: products are asked again each time they grow by a factor."""
    if isinstance(e, sp.Indexed):
        return tuple(dict.fromkeys(i for i in e.indices if i.is_Symbol))
    if isinstance(e, sp.KroneckerDelta):
        return tuple(dict.fromkeys(i for i in e.args if i.is_Symbol))
    if isinstance(e, ESum):
        return tuple(i for i in _free(e.body) if i not in e.indices)
    if isinstance(e, Extent):
        return ()
    parts = e.args[:2] if isinstance(e, Partial) else e.args
    return tuple(dict.fromkeys(i for a in parts for i in _free(a)))


def index_names(expr: sp.Basic) -> set[str]:
    """Every index name used in `expr`, bound or free."""
    return {s.name for s in expr.atoms(sp.Symbol) if s.is_integer}


@dataclass(frozen=True, slots=True)
class Definition:
    name: str
    indices: tuple[sp.Expr, ...]  # left-hand side: index symbols and Integer(0) for size-1 axes
    expr: sp.Expr
    source: str                   # the statement, or how einmlp named it
    lifted: bool                  # named by einmlp, not by the user
    extents: tuple = ()           # per left-hand axis, where its length comes from (None: size 1)

    def extent(self, i: sp.Symbol) -> tuple[str, int]:
        """(tensor, axis) giving the length of left-hand index `i`, even if sympy cancelled it away."""
        for own, extent in zip(self.indices, self.extents):
            if own == i and extent is not None:
                return extent.name, extent.axis
        entry = next(e for e in sp.preorder_traversal(self.expr) if isinstance(e, sp.Indexed) and i in e.indices)
        return entry.base.label.name, list(entry.indices).index(i)

    @property
    def lhs(self) -> sp.Expr:
        return base(self.name)[self.indices] if self.indices else sp.Symbol(self.name, real=True)


@dataclass(frozen=True, slots=True)
class Model:
    definitions: dict[str, Definition]  # in order; lifted ones before their first use
    inputs: dict[str, int]              # name -> rank
    targets: tuple[str, ...]            # assigned by the user, in order
    functions: FunctionTable
    uses: dict[str, frozenset[str]]     # name -> every tensor it depends on, transitively
    refs: dict[str, tuple[str, ...]] = field(default_factory=dict)  # name -> tensors its right side names

    def rank(self, name: str) -> int:
        return len(self.definitions[name].indices) if name in self.definitions else self.inputs[name]

    def depends(self, name: str, on: str) -> bool:
        return on in self.uses.get(name, frozenset())


def tensor_names(expr: sp.Basic) -> list[str]:
    """Tensors referenced in `expr`, in order of first occurrence."""
    names: dict[str, None] = {}
    for e in sp.preorder_traversal(expr):
        if isinstance(e, sp.Indexed):
            names[e.base.label.name] = None
        elif isinstance(e, sp.Symbol) and e.is_real and not e.is_integer and e != PARAM:
            names[e.name] = None
    return list(names)


@functools.lru_cache(maxsize=1 << 16)
def tensor_set(e: sp.Basic) -> frozenset[str]:
    """The tensors `e` names, remembered per node: derivatives and rewrites ask again at every level below."""
    if isinstance(e, sp.Indexed):
        return frozenset((e.base.label.name,))
    if isinstance(e, sp.Symbol):
        return frozenset((e.name,)) if e == sp.Symbol(e.name, real=True) else frozenset()
    if isinstance(e, Extent) or not e.args:
        return frozenset()
    return frozenset().union(*(tensor_set(a) for a in e.args))


def _syntax_extent(expr: Expr, name: str) -> Extent:
    """The first axis that index `name` runs over in a syntax tree (it occurs: summation checked)."""
    stack = [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, Ref) and name in node.indices:
            return Extent(name, node.name, node.indices.index(name))
        stack.extend(reversed([getattr(node, f) for f in ("left", "right", "operand", "arg", "body")
                               if hasattr(node, f)]))
    raise ValueError(f"index {name} does not occur in {expr}")


class _Builder:
    """Turns checked syntax into sympy and lifts contractions out of nonlinear contexts."""

    def __init__(self, program: CheckedProgram, functions: FunctionTable):
        self.program, self.functions = program, functions
        self.taken = set(program.inputs) | set(program.targets) | {f.name for f in program.functions}
        self.definitions: dict[str, Definition] = {}
        self.lifted: dict[sp.Expr, str] = {}
        self.param: str | None = None  # while building a function definition's body
        self.deep = False  # the statement nests functions beyond MAX_NESTING: name every level

    def build(self, expr: Expr) -> sp.Expr:
        if isinstance(expr, Group):
            return self.build(expr.body)
        if isinstance(expr, Num):
            v = expr.value
            return sp.Rational(v.numerator, v.denominator)
        if isinstance(expr, Ref):
            return PARAM if expr.name == self.param and not expr.indices else ref(expr.name, expr.indices)
        if isinstance(expr, Neg):
            return -self.build(expr.operand)
        if isinstance(expr, Call):
            arg = self.build(expr.arg)
            if expr.function == "sqrt" and arg.is_Number:  # a power of a number, checked as `^`'s are
                _check_power(arg, sp.Rational(1, 2))
            return _written_out(self.functions.apply(expr.function, arg))
        if isinstance(expr, SumOver):  # extents from the text: sympy may cancel the body
            return ESum(self.build(expr.body), [index(i) for i in expr.indices],
                        [_syntax_extent(expr.body, i) for i in expr.indices])
        left, right = self.build(expr.left), self.build(expr.right)
        if expr.op == "^" and right.is_Number and (right is sp.nan or not abs(right) <= MAX_EXPONENT):
            raise NumericError(f"the exponent {float(right):.3g} is out of range (at most {MAX_EXPONENT} in size)")
        if expr.op == "^" and left.is_Number and right.is_Number:
            _check_power(left, right)
        return {"+": lambda: left + right, "-": lambda: left - right, "*": lambda: left * right,
                "/": lambda: left / right, "^": lambda: left ** right}[expr.op]()

    # -- lifting ---------------------------------------------------------------------------
    def lift_all(self, expr: sp.Expr, lhs: tuple, written: tuple = ()) -> sp.Expr:
        """`expr` with contractions in nonlinear contexts named; a deep nest is named level by level.

        Written out, a nest of depth n has a gradient of n factors and a Hessian of about n^2
        terms; named level by level it is a chain of n statements, linear to backpropagate.
        `written`: the index names in the order the source writes them, which a named
        contraction keeps (`X[i,j] W1[j,k]` is A[i,k], not A[k,i]).
        """
        self.lhs = lhs
        self.written = {index(i): k for k, i in enumerate(dict.fromkeys(written))}
        self.deep = _nesting(expr) > MAX_NESTING
        return self.visit(expr)

    def visit(self, e: sp.Expr) -> sp.Expr:
        if e.is_Atom or isinstance(e, (sp.Indexed, Extent)):
            return e
        if isinstance(e, ESum):
            body = e.body
            if isinstance(body, sp.Mul) and sum(1 for a in body.args if not a.is_Number) > 1:
                factors = [self.visit(a) for a in body.args]
                body = sp.Mul(*[self.lift(a) if isinstance(a, sp.Function) else a for a in factors])
            else:
                body = self.visit(body)
            return ESum(body, e.indices, e.extents)
        if isinstance(e, sp.Add) and (name := self._residual_name(e)):
            return self.lift(e, name)
        args = [self.visit(a) for a in e.args]
        if isinstance(e, (sp.Function, sp.Pow)):
            args = [self.lift(a) if a.has(ESum) or (self.deep and _nesting(a)) else a for a in args]
        return e.func(*args)

    def _residual_name(self, e: sp.Add) -> str | None:
        """`Y - Yhat` is the article's residual, named Ytilde."""
        if len(e.args) != 2:
            return None
        pos = [a for a in e.args if isinstance(a, sp.Indexed)]
        neg = [-a for a in e.args if isinstance(-a, sp.Indexed)]
        if len(pos) == 1 and len(neg) == 1 and neg[0].indices == pos[0].indices:
            if neg[0].base.label.name == pos[0].base.label.name + "hat":
                return pos[0].base.label.name + "tilde"
        return None

    def pattern(self, e: sp.Expr, free: tuple) -> tuple:
        candidates = [self.lhs] + [x.indices for x in sp.preorder_traversal(e) if isinstance(x, sp.Indexed)]
        for c in candidates:
            symbols = [i for i in c if i.is_Symbol]
            if set(symbols) == set(free) and len(symbols) == len(free) and all(i.is_Symbol or i == 0 for i in c):
                return tuple(c)
        return tuple(sorted(free, key=lambda i: self.written.get(i, len(self.written))))

    def lift(self, e: sp.Expr, name: str | None = None) -> sp.Expr:
        free = free_indices(e)
        pattern = self.pattern(e, free)
        canon = {s: sp.Symbol(f"_c{k}", integer=True) for k, s in enumerate(s for s in pattern if s.is_Symbol)}
        key = sp.Tuple(e.xreplace(canon), sp.Tuple(*[canon.get(i, i) for i in pattern]))
        if key not in self.lifted:
            if name is None or name in self.taken:
                name = next(n for n in _fresh_names() if n not in self.taken)
            self.taken.add(name)
            self.lifted[key] = name
            self.definitions[name] = Definition(name, pattern, e, "", True)
        return ref(self.lifted[key], [i.name if i.is_Symbol else int(i) for i in pattern])


@functools.lru_cache(maxsize=1 << 14)
def _nesting(e: sp.Expr) -> int:
    """How deep functions and powers nest in `e`: each level is one more factor of the chain rule."""
    if not e.args or isinstance(e, (sp.Indexed, Extent)):
        return 0
    inner = max(_nesting(a) for a in e.args)
    return inner + 1 if isinstance(e, (sp.Function, sp.Pow)) else inner


def _written_out(call: sp.Expr) -> sp.Expr:
    """A user function whose body nests beyond MAX_NESTING, or called on a constant, is written out.

    A deep one's levels are then named as a deep statement's are (kept whole, its second
    derivative would be written out with about depth^2 factors); a constant one is checked as
    constants are (g(1) = 0 in `T / g(1)` divides by zero).
    """
    definition = type(call).definition if isinstance(call, UserFunction) else None
    if definition is None or not (call.args[0].is_number or _nesting(definition) > MAX_NESTING):
        return call
    body = _put(definition, call.args[0])
    return body.replace(lambda e: isinstance(e, UserFunction) and e.args[0].is_number, _written_out)


def _put(expr: sp.Expr, value: sp.Expr) -> sp.Expr:
    """`expr` at PARAM = `value`, each power of two numbers checked before sympy builds it (xreplace would not)."""
    if expr == PARAM:
        return value
    if not expr.has(PARAM):
        return expr
    args = [_put(a, value) for a in expr.args]
    if isinstance(expr, sp.Pow) and args[0].is_Number and args[1].is_Number:
        _check_power(*args)
    return expr.func(*args)


def _check_power(base: sp.Number, exponent: sp.Number) -> None:
    """Refuse a constant power too large to compute (9^9^9), or a root too deep to compare, before sympy tries.

    2^1e-300 is a root of degree 10^300: deciding its sign, sympy asks for its minimal polynomial.
    """
    if base in (0, 1, -1):
        return
    if exponent.is_Rational and exponent.q > MAX_ROOT_DEGREE:
        raise NumericError(f"the constant {float(base):.6g}^{float(exponent):.3g} is a root of degree about "
                           f"10^{math.log10(exponent.q):.0f}, too deep for exact arithmetic (at most "
                           f"10^{math.log10(MAX_ROOT_DEGREE):.0f}); write the number it stands for")
    if exponent.is_Rational and exponent.q > 1 and base.is_Rational and \
            (digits := max(_digits_beyond_tens(base.p), _digits_beyond_tens(base.q))) > MAX_ROOT_DIGITS:
        raise NumericError(f"the constant {float(base):.6g}^{float(exponent):.3g} is a root of a number of about "
                           f"{digits} digits, too many for exact arithmetic (at most {MAX_ROOT_DIGITS} besides its "
                           "powers of ten); write the number with fewer digits")
    size = abs(float(exponent)) * abs(_log10(base))
    if not size <= MAX_MAGNITUDE:
        raise NumericError(f"the constant {base}^{exponent} is beyond the range of a float (about 10^+-{size:.3g})")


def _digits_beyond_tens(n) -> int:
    """About how many decimal digits |n| has once its factors 2 and 5 are divided out."""
    n = abs(int(n))
    if n == 0:
        return 0
    n >>= (n & -n).bit_length() - 1
    for step in (5 ** 256, 5 ** 16, 5):
        while n % step == 0:
            n //= step
    return int(n.bit_length() * 0.30103) + 1


def _log10(number: sp.Number) -> float:
    """log10 |number|, exact enough for any rational (a float of 1e-400 would be 0)."""
    if number.is_Rational:
        return math.log10(abs(int(number.p))) - math.log10(int(number.q))
    return math.log10(abs(float(number)))


def check_constants(expr: sp.Expr, where: str) -> None:
    """Every constant in `expr` is a finite number: no division by zero, nothing beyond a float."""
    if expr.has(sp.nan, sp.zoo, sp.oo, -sp.oo):
        raise NumericError(f"`{where}` divides by zero or is not a number")
    if expr.has(sp.I):
        raise NumericError(f"`{where}` has a constant that is not a real number (such as sqrt(-1))")
    for number in expr.atoms(sp.Number):
        if number != 0 and not abs(_log10(number)) <= MAX_MAGNITUDE:
            raise NumericError(f"the constant {float(number):.3g} in `{where}` is beyond the range of a float")
    for e in sp.postorder_traversal(expr):  # exp(1000) stays a symbol in sympy, but is inf in numpy
        power = e.args[0].evalf(5) if isinstance(e, sp.exp) and e.args[0].is_number else None
        if power is not None and power.is_Number and not abs(float(power)) <= MAX_MAGNITUDE * math.log(10):
            raise NumericError(f"the constant {e} in `{where}` is beyond the range of a float")


def _written_indices(expr) -> tuple[str, ...]:
    """Index names of a syntax tree, left to right as written."""
    if isinstance(expr, Ref):
        return tuple(i for i in expr.indices if isinstance(i, str))
    parts = [getattr(expr, a) for a in ("left", "right", "operand", "arg", "body") if hasattr(expr, a)]
    return tuple(i for part in parts for i in _written_indices(part))


def _fresh_names():
    yield from ascii_uppercase
    k = 1
    while True:
        yield from (f"{c}{k}" for c in ascii_uppercase)
        k += 1


def _define_functions(program: CheckedProgram, functions: FunctionTable, builder: _Builder) -> None:
    for definition in program.functions:
        builder.param = definition.param
        body = builder.build(definition.body)
        check_constants(body, definition.source)
        functions.define(definition.name, body)
    builder.param = None


def build_model(program: CheckedProgram) -> Model:
    """The sympy model of a checked program, with contractions in nonlinear contexts named."""
    functions = FunctionTable()
    builder = _Builder(program, functions)
    _define_functions(program, functions, builder)
    for checked in program.statements:
        st = checked.statement
        lhs = tuple(index(i) if isinstance(i, str) else sp.Integer(i) for i in st.indices)
        built = builder.build(checked.expr)
        check_constants(built, st.source)
        expr = builder.lift_all(built, lhs, tuple(i for i in st.indices if isinstance(i, str))
                                + _written_indices(checked.expr))
        extents = tuple(_syntax_extent(checked.expr, i) if isinstance(i, str) else None for i in st.indices)
        builder.definitions[st.name] = Definition(st.name, lhs, expr, st.source, False, extents)
    for name, d in builder.definitions.items():
        if d.lifted:
            builder.definitions[name] = Definition(name, d.indices, d.expr, f"{index_str(d.lhs)} = {index_str(d.expr)}",
                                                   True)
    refs = {name: tuple(tensor_names(d.expr)) for name, d in builder.definitions.items()}
    return Model(builder.definitions, dict(program.inputs), tuple(program.targets), functions,
                 transitive_uses(refs, builder.definitions), refs)


def transitive_uses(refs: dict[str, tuple[str, ...]], definitions: dict) -> dict[str, frozenset[str]]:
    """Name -> every tensor it depends on, transitively: what it names, and what gives its lengths.

    `K[z] = V[z,z] - V[z,z]` cancels to 0, yet V still gives the length of z.
    """
    uses: dict[str, frozenset[str]] = {}
    for name, direct in refs.items():
        d = definitions[name]
        lengths = {e.name for e in d.extents if e is not None} | {e.name for e in d.expr.atoms(Extent)}
        direct = set(direct) | lengths
        uses[name] = frozenset(direct).union(*(uses.get(n, frozenset()) for n in direct))
    return uses
