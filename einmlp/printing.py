"""numpy source for elementwise expressions: one sympy product over a layout of axes.

`align` views a tensor with its axes in a given order (`W2[k,0]` over (i, k) is `W2.T`),
`Printer` writes sums, products, powers and functions over such views (`C*C*C`, not
`C**3`, which numpy runs 30x slower), and user functions are written out by their bodies
(`inline_definitions`) within a size bound.
"""

from __future__ import annotations

import functools
import math
from collections import Counter

import sympy as sp
from opt_einsum import get_symbol

from .errors import EinmlpError
from .functions import PARAM, UserFunction, numpy_source, sigmoid, sigmoid_slope, step
from .stable import Held, PowerLog
from .symbolic import Extent


def float_source(number: sp.Expr) -> str:
    """A constant as float source; a value beyond float range is np.inf, never the name inf."""
    value = float(number)
    if math.isfinite(value):
        return repr(value)
    return "np.nan" if math.isnan(value) else ("np.inf" if value > 0 else "-np.inf")


def letters(indices, letter_of) -> str:
    """The einsum subscripts of `indices`: "ij" for (i, j)."""
    return "".join(letter_of[i] for i in indices)


def align(var: str, indices: tuple, order: list, size1: frozenset = frozenset()) -> str:
    """Numpy source viewing `var[indices]` with axes laid out as `order` (missing ones as None).

    `size1` lists axes known to have length 1: `C[i,0]` laid out over (i, n) is just `C`. A fixed
    index is always on an axis of length 1, which broadcasts like a missing one: `W2[k,0]` laid
    out over (i, k) is `W2.T`.
    """
    fixed = [p for p, i in enumerate(indices) if i.is_Integer]
    missing = [o for o in order if o not in indices]
    symbols = [i for i in indices if not i.is_Integer]
    if fixed and len(fixed) == len(missing) and len(set(symbols)) == len(symbols) and set(symbols) <= set(order):
        standing = list(indices)
        for p, o in zip(fixed, missing):
            standing[p] = o
        perm = [standing.index(o) for o in order]
        if perm == list(range(len(perm))):
            return var
        return f"{var}.T" if len(perm) == 2 else f"np.transpose({var}, {tuple(perm)})"
    if len(indices) == len(order) and all(i == o or (i.is_Integer and o not in indices)
                                          for i, o in zip(indices, order)):
        if all(i.is_Symbol or p in size1 for p, i in enumerate(indices)):
            return var
        return var + "[" + ", ".join(f"{i}:{i + 1}" if i.is_Integer else ":" for i in indices) + "]"
    code = var
    if any(i.is_Integer for i in indices):
        code += "[" + ", ".join(str(i) if i.is_Integer else ":" for i in indices) + "]"
    symbols = [i for i in indices if not i.is_Integer]
    unique = list(dict.fromkeys(symbols))
    if len(unique) < len(symbols):
        letter = {s: get_symbol(k) for k, s in enumerate(unique)}
        code = f"np.einsum('{letters(symbols, letter)}->{letters(unique, letter)}', {code})"
    target = [i for i in order if i in unique]
    perm = [unique.index(i) for i in target]
    if perm != list(range(len(perm))):
        code = f"{code}.T" if len(perm) == 2 else f"np.transpose({code}, {tuple(perm)})"
    if target != list(order) and target:
        code += "[" + ", ".join(":" if i in unique else "None" for i in order) + "]"
    return code


MAX_WRITTEN = 20000  # nodes of an expression with its user functions written out


@functools.lru_cache(maxsize=4096)  # written out once, however often it is compiled
def inline_definitions(expr: sp.Expr) -> sp.Expr:
    """Replace defined user functions (and their derivatives) by their bodies.

    Refused beyond MAX_WRITTEN nodes, measured before writing anything out: the second
    derivative of f(f(x)) nested k deep grows like 2^k, and sympy would take minutes.
    """
    if (size := _written_size(expr)) > MAX_WRITTEN:
        raise EinmlpError(f"a derivative of the program's functions grows to about {size} operations when they "
                          f"are written out (at most {MAX_WRITTEN}); write some of the nested functions as statements")

    def body(e):
        argument = e.args[0]
        if any(p.is_Pow and not p.exp.is_integer for p in sp.preorder_traversal(argument)):
            argument = Held(argument)  # sqrt(a) in f(x) = x^2 stays sqrt(a)*sqrt(a), nan where a < 0
        return type(e).definition.xreplace({PARAM: argument})
    while True:
        new = expr.replace(lambda e: isinstance(e, UserFunction) and type(e).definition is not None, body)
        if new == expr:
            return new
        expr = new


def _written_size(e: sp.Expr) -> int:
    """How many nodes `e` has with its user functions written out, counted without writing them."""
    if isinstance(e, UserFunction) and type(e).definition is not None:
        size, uses = _body_size(type(e))
        return size + uses * (_written_size(e.args[0]) - 1)
    return 1 + sum(_written_size(a) for a in e.args)


@functools.lru_cache(maxsize=4096)
def _body_size(function: type) -> tuple[int, int]:
    """A user function's body written out: (its nodes, how many times it uses its argument)."""
    return _written_size(function.definition), _uses(function.definition)


def _uses(e: sp.Expr) -> int:
    if e == PARAM:
        return 1
    if isinstance(e, UserFunction) and type(e).definition is not None:
        return _body_size(type(e))[1] * _uses(e.args[0])
    return sum(_uses(a) for a in e.args)


def never_negative(e: sp.Expr) -> bool:
    """Whether `e` is provably >= 0 everywhere: products and even powers of sigmoids, exps, squares.

    Enough for the Gram matrices of Hessians: sigmoid(z) (1 - sigmoid(z)) is never negative.
    """
    if e.is_Number:
        return e >= 0
    if isinstance(e, sp.Mul):
        return all(never_negative(f) for f in e.args)
    if isinstance(e, sp.Pow):
        return (e.exp.is_Integer and e.exp % 2 == 0) or never_negative(e.base)
    if isinstance(e, (sigmoid, sigmoid_slope, sp.exp)):
        return True
    return _one_minus_sigmoid(e) is not None


def _one_minus_sigmoid(e: sp.Expr) -> sp.Expr | None:
    """u for 1 - sigmoid(u), else None."""
    if isinstance(e, sp.Add) and len(e.args) == 2:
        one, other = sorted(e.args, key=lambda a: not a.is_Number)
        if one == 1 and isinstance(-other, sigmoid):
            return (-other).args[0]
    return None


def sigmoid_slopes(members: list[sp.Expr]) -> list[sp.Expr]:
    """The factors of a product, with sigmoid(u)^a (1 - sigmoid(u))^b as sigmoid_slope(u)^min(a, b).

    The rest of a power stays as it was: sigmoid(u)^2 (1 - sigmoid(u)) is sigmoid_slope(u) sigmoid(u).
    """
    factors = [f for m in members for f in sp.Mul.make_args(m)]
    ones, others, rest = Counter(), Counter(), []
    for f in factors:
        base, exp = f.as_base_exp()
        u = _one_minus_sigmoid(base)
        if exp.is_Integer and exp > 0 and isinstance(base, sigmoid):
            ones[base.args[0]] += int(exp)
        elif exp.is_Integer and exp > 0 and u is not None:
            others[u] += int(exp)
        else:
            rest.append(f)
    if not ones.keys() & others.keys():
        return members
    for u in dict.fromkeys([*ones, *others]):
        both = min(ones[u], others[u])
        rest += [sigmoid_slope(u) ** both, sigmoid(u) ** (ones[u] - both), (1 - sigmoid(u)) ** (others[u] - both)]
    return [f for f in rest if f != 1]


class Printer:
    """numpy source for an elementwise sympy expression laid out over `order`."""

    def __init__(self, order: list, size_of, var_of, size1_of=lambda name: frozenset()):
        self.order, self.size_of, self.var_of, self.size1_of = order, size_of, var_of, size1_of

    def p(self, e: sp.Expr) -> str:
        if isinstance(e, sp.Indexed):
            name = e.base.label.name
            return align(self.var_of(name), e.indices, self.order, self.size1_of(name))
        if isinstance(e, Extent):
            return f"{self.var_of(e.name)}.shape[{e.axis}]"
        if e.is_Symbol:
            return self.var_of(e.name)
        if e.is_Integer and abs(e) < 2 ** 53:
            return str(int(e))
        if e.is_Number or isinstance(e, sp.NumberSymbol):
            return float_source(e)
        if e.is_number and not e.has(UserFunction):  # sqrt(2), log(3): one float, as every array library takes it
            try:
                return float_source(e)
            except TypeError:  # complex
                pass
        if isinstance(e, sp.Add):
            return self.add(e)
        if isinstance(e, sp.Mul):
            return self.mul(e)
        if isinstance(e, sp.Pow):
            return self.pow(e.base, e.exp)
        if isinstance(e, sp.KroneckerDelta):
            return self.delta(*e.args)
        if isinstance(e, Held):
            return self.atom(e.args[0])
        if isinstance(e, PowerLog):
            b = self.p(e.args[0])
            return f"np.log(np.where({b} == 0, 1.0, {b}))"
        if isinstance(e, UserFunction) and type(e).definition is not None:
            return self.p(inline_definitions(e))  # written out all the way, as atom() judges it
        if isinstance(e, UserFunction):
            return f"_functions[{e.label()!r}]({self.p(e.args[0])})"
        if isinstance(e, sp.log) and isinstance(e.args[0], sigmoid):  # log(sigmoid(u)) = -softplus(-u)
            return f"(-_softplus({self.p(-e.args[0].args[0])}))"  # no log(0) once sigmoid underflows, past u = -745
        if isinstance(e, sp.log) and (u := _one_minus_sigmoid(e.args[0])) is not None:  # = -softplus(u): no
            return f"(-_softplus({self.p(u)}))"  # 1 - sigmoid(u) rounding to one ulp or 0 past u = 37 (-36.7 for -37.3)
        if isinstance(e, sp.Function) and len(e.args) == 1:
            return numpy_source(e, self.p(e.args[0]))
        raise EinmlpError(f"cannot compile {e} to numpy")

    def atom(self, e: sp.Expr) -> str:
        if isinstance(e, UserFunction) and type(e).definition is not None:
            e = inline_definitions(e)  # judged written out all the way: d'(A) is c'(A) is a sum
        code = self.p(e)
        simple = isinstance(e, (sp.Indexed, sp.Symbol, sp.Function, Extent)) or (e.is_Integer and e >= 0)
        return code if simple else f"({code})"

    def add(self, e: sp.Add) -> str:
        terms = list(sp.Add.make_args(e))
        first = next((t for t in terms if t.as_coeff_Mul()[0] >= 0), None)
        if first is not None:  # Y - Yhat, one operation, where -Yhat + Y is two
            terms.remove(first)
            terms.insert(0, first)
        out = ""
        for k, term in enumerate(terms):
            c, rest = term.as_coeff_Mul()
            if c < 0:  # a subtracted sum (or a function inlined to one) needs parentheses
                out += (" - " if k else "-") + (self.p(-term) if (-term).is_Mul or (-term).is_Pow else self.atom(-term))
            else:
                out += (" + " if k else "") + self.p(term)
        return out

    def mul(self, e: sp.Mul) -> str:
        c, rest = e.as_coeff_Mul()
        if c < 0:
            return "-" + self.atom(-e) if not isinstance(-e, sp.Add) else f"-({self.p(-e)})"
        num, den = [], []
        for f in sp.Mul.make_args(rest):
            if isinstance(f, sp.Pow) and f.exp.is_Number and f.exp < 0:
                den.append(self.atom(sp.Pow(f.base, -f.exp)))
            else:
                num.append(self.atom(f))
        if c != 1:
            num.insert(0, self.p(c))
        code = "*".join(num) if num else "1.0"
        return code + "".join(f"/{d}" for d in den)

    def pow(self, base: sp.Expr, exp: sp.Expr) -> str:
        # the base is printed once, by the branch that uses it: printed and dropped, a tower of
        # (...)^-2 powers doubled the work at each level (20 nested functions took a minute)
        if exp.is_Integer and 1 <= exp <= 4:
            b = self.atom(base)
            return "*".join([b] * int(exp)) if isinstance(base, (sp.Indexed, sp.Symbol)) else f"_ipow({b}, {exp})"
        if exp.is_Integer and exp < 0:
            return f"1.0/{self.atom(sp.Pow(base, -exp))}"
        if exp == sp.S.Half:
            return f"np.sqrt({self.p(base)})"
        if exp == -sp.S.Half:
            return f"1.0/np.sqrt({self.p(base)})"
        return f"np.power({self.p(base)}, {self.p(exp)})"

    def delta(self, a: sp.Expr, b: sp.Expr) -> str:
        ndim = len(self.order)

        def axis(i):
            if i.is_Integer:
                return str(int(i))
            return f"_arange({self.size_of(i)}, {self.order.index(i)}, {ndim})"
        return f"_equal({axis(a)}, {axis(b)})"


def gate(f: sp.Expr) -> sp.Expr | None:
    """step(u) for a factor step(u) or step(u)^n (a second derivative's relu'^2), else None."""
    if isinstance(f, step):
        return f
    if f.is_Pow and isinstance(f.base, step) and f.exp.is_Integer and f.exp > 0:
        return f.base
    return None

