"""Lower index forms to an `EinsumPlan`.

The plan is a flat list of equations, each one einsum or one elementwise numpy expression,
computing every forward intermediate once.

Plan grammar::

    plan     := equation*  outputs
    equation := var '=' 'einsum' '(' subscripts ',' var, ... ')'
              | var '=' numpy-expression-over-vars

A term `c * sum[s](f1 * f2 * ...)` becomes: one elementwise equation per group of
factors (a computed factor absorbs every factor whose indices it covers, so
`Ytilde * f2'(C) * W2.T * f1'(A)` is one fused numpy expression), then one einsum over
the groups that are left (`X.T @ G` reaches BLAS through opt_einsum), then a sum of
terms broadcast to the output's axes.
"""

from __future__ import annotations

import functools
import keyword
import math
import re
from collections import Counter
from dataclasses import dataclass, field, replace

import sympy as sp
from opt_einsum import get_symbol

from .deltas import IndexForm, Term, normalize
from .errors import EinmlpError, IndexNotationError
from .functions import PARAM, UserFunction, numpy_source, step, sigmoid
from .grad import Names
from .render import index_str
from .shapes import fixed_axes
from .stable import Held, PowerLog, term_power_logs
from .symbolic import Extent, Model, free_indices, index_names

# Generated code uses the globals np and oe, and names of its own that start with `_` (a user
# name never does): temporaries _t1, outputs _grad_W1, helpers _full. User names are kept as
# they are, except Python keywords and np/oe, which become _lambda_, _np_: out of reach too.
MANGLED = set(keyword.kwlist) | {"np", "oe"}
MAX_LETTERS = 52  # a-z and A-Z: the subscripts numpy's einsum understands
MAX_PENDING = 40  # dependencies still to lower beyond which they are lowered in program order first


@dataclass(frozen=True, slots=True)
class Equation:
    out: str                # the variable it assigns
    op: str                 # "einsum" or "eval"
    args: tuple[str, ...]   # einsum operands (for "eval", the text names what it reads)
    text: str               # einsum subscripts, or a numpy expression
    comment: str = ""       # what it computes, in index notation
    code: str = ""          # for an einsum that is a plain matrix product: the direct numpy
    spec: str = ""          # for a matrix product written with `@`: the same as an np.einsum call

    def __str__(self) -> str:
        rhs = self.code or (f"einsum('{self.text}', {', '.join(self.args)})" if self.op == "einsum" else self.text)
        return f"{self.out} = {rhs}" + (f"    # {self.comment}" if self.comment else "")


@dataclass(frozen=True, slots=True)
class EinsumPlan:
    inputs: tuple[str, ...]        # arrays the plan reads, by program name
    equations: tuple[Equation, ...]
    outputs: dict[str, str]        # result name -> variable
    abstract: tuple[str, ...]      # abstract functions the caller must supply
    variables: dict[str, str] = field(default_factory=dict)  # program name -> variable

    def __str__(self) -> str:
        lines = [str(e) for e in self.equations]
        lines.append("return " + ", ".join(f"{k}={v}" if k else v for k, v in self.outputs.items()))
        return "\n".join(lines)


def variable(name: str) -> str:
    """The Python name of a program name: itself, or _name_ for keywords and np/oe."""
    return f"_{name}_" if name in MANGLED else name


def output(name: str) -> str:
    """The variable that holds the gradient with respect to `name`: _grad_W1."""
    return "_grad_" + name


def _float(number: sp.Expr) -> str:
    """A constant as float source; a value beyond float range is np.inf, never the name inf."""
    value = float(number)
    if math.isfinite(value):
        return repr(value)
    return "np.nan" if math.isnan(value) else ("np.inf" if value > 0 else "-np.inf")


def _letters(indices, letter_of) -> str:
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
        code = f"np.einsum('{_letters(symbols, letter)}->{_letters(unique, letter)}', {code})"
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


def _nonnegative(e: sp.Expr) -> bool:
    """Whether `e` is provably >= 0 everywhere: products and even powers of sigmoids, exps, squares.

    Enough for the Gram matrices of Hessians: sigmoid(z) (1 - sigmoid(z)) is never negative.
    """
    if e.is_Number:
        return e >= 0
    if isinstance(e, sp.Mul):
        return all(_nonnegative(f) for f in e.args)
    if isinstance(e, sp.Pow):
        return (e.exp.is_Integer and e.exp % 2 == 0) or _nonnegative(e.base)
    if isinstance(e, (sigmoid, sp.exp)):
        return True
    if isinstance(e, sp.Add) and len(e.args) == 2:  # 1 - sigmoid(x)
        one, other = sorted(e.args, key=lambda a: not a.is_Number)
        return one == 1 and isinstance(-other, sigmoid)
    return False


class _Printer:
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
            return _float(e)
        if e.is_number and not e.has(UserFunction):  # sqrt(2), log(3): one float, as every array library takes it
            try:
                return _float(e)
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
        b = self.atom(base)
        if exp.is_Integer and 1 <= exp <= 4:
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


def _gate(f: sp.Expr) -> sp.Expr | None:
    """step(u) for a factor step(u) or step(u)^n (a second derivative's relu'^2), else None."""
    if isinstance(f, step):
        return f
    if f.is_Pow and isinstance(f.base, step) and f.exp.is_Integer and f.exp > 0:
        return f.base
    return None


def _matmul(a: tuple, b: tuple, out: tuple) -> str:
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


_SLOTS: list[sp.Symbol] = []
# The one size-1 axis of an output, where the left-hand side writes it as 0: named "0", so that
# comments still read C[i,0]. A fixed index is always 0 on an axis of length 1 (shapes checks it).
_UNIT = sp.Symbol("0", integer=True)


def _slot(position: int) -> sp.Symbol:
    """A placeholder for the length-1 axis at `position` of a left-hand side like `C[i,0]`."""
    while len(_SLOTS) <= position:
        _SLOTS.append(sp.Symbol(f"_slot{len(_SLOTS)}", integer=True))
    return _SLOTS[position]


def _reduction(operand: tuple, out: tuple) -> str:
    """The `.sum(axis=...)` source for a one-operand einsum that only sums axes, else ""."""
    var, indices = operand
    if len(set(indices)) < len(indices) or [i for i in indices if i in out] != list(out):
        return ""
    axes = tuple(k for k, i in enumerate(indices) if i not in out)
    return f"{var}.sum(axis={axes[0] if len(axes) == 1 else axes})" if axes else ""


class Lowerer:
    """Builds one plan for one or more outputs, sharing every equation it can."""

    def __init__(self, model: Model, shifts: dict[str, int] | None = None):
        self.model = model
        self.shifts = shifts or {}  # softmax logits read less their row maximum (stable.py)
        self.equations: list[Equation] = []
        self.cache: dict[str, str] = {}   # numpy source -> variable holding it
        self.defined: set[str] = set()
        self.inputs: dict[str, None] = {}
        self.abstract: dict[str, None] = {}
        self.count = 0
        self.computed: set[str] = set()   # temporaries that expressions read as tensors
        self.nonnegative: set[str] = set()  # temporaries never negative (a square root of them is real)
        self.units = set(fixed_axes(model))  # (tensor, axis) of length 1: written somewhere with a fixed 0

    def size1_of(self, name: str) -> frozenset:
        """Axes of `name` of length 1 (a fixed 0 on them anywhere in the program)."""
        return frozenset(axis for n, axis in self.units if n == name)

    def temp(self) -> str:
        self.count += 1
        return f"_t{self.count}"

    def var_of(self, name: str) -> str:
        if name in self.computed:
            return name
        self.need(name)
        if name in self.shifts and not self.size1_of(name):
            var, axis = variable(name), self.shifts[name]
            return self.emit(f"{var} - np.max({var}, axis={axis}, keepdims=True)",
                             comment=f"{name} less each softmax row's maximum: the same softmax, no overflow")
        return variable(name)

    def need(self, name: str) -> None:
        """Make sure tensor `name` is computed before the equations that follow.

        Dependencies are lowered as the expression reaches them; a long chain of them is
        lowered first, in program order, so the recursion stays shallow.
        """
        if name in self.defined:
            return
        pending = [n for n in self.model.uses.get(name, ()) if n not in self.defined]
        if len(pending) > MAX_PENDING:
            for dependency in [n for n in self.model.definitions if n in set(pending)]:
                self.need(dependency)
        self.defined.add(name)
        if name in self.model.inputs:
            self.inputs[name] = None
            return
        d = self.model.definitions[name]
        names = Names(index_names(d.expr) | {s.name for s in d.indices if s.is_Symbol})
        form = IndexForm(tuple(normalize(d.expr, names)), d.indices)
        self.lower(form, variable(name), {i: d.extent(i) for i in d.indices if i.is_Symbol}, comment=d.source)

    def emit(self, code: str, comment: str = "", spec: str = "") -> str:
        if code in self.cache:
            return self.cache[code]
        if code.isidentifier():  # already a variable: no statement that only copies a name
            return code
        var = self.temp()
        self.equations.append(Equation(var, "eval", (), code, comment, spec=spec))
        self.cache[code] = var
        return var

    def lower(self, form: IndexForm, out: str, bindings: dict, comment: str = "") -> str:
        """Emit equations computing `form` into variable `out`; `bindings` size free indices."""
        form = replace(form, terms=tuple(term_power_logs(self.unscaled(t)) for t in form.terms))
        form, unit = self.unit_axis(form, bindings)
        layout = [i if i.is_Symbol else _slot(p) for p, i in enumerate(form.free)]
        sizes = dict(bindings)
        for t in form.terms:
            sizes.update({k: v for k, v in self._bindings(t).items() if k not in sizes})

        def size_of(i):
            return "1" if i in _SLOTS or i == _UNIT else f"{self.var_of(sizes[i][0])}.shape[{sizes[i][1]}]"
        parts, covered, arrays = [], set(), False
        for term in form.terms:
            var, indices, coeff = self.term(term, layout, size_of)
            arrays = arrays or bool(var)
            if var and indices:  # laid out over the layout, size-1 axes included
                covered |= set(indices) | (set(layout) & set(_SLOTS)) | {unit}
            part = align(var, indices, layout) if var else ""
            parts.append(coeff + ("*" if coeff and part else "") + part if coeff or part else "1.0")
        code = " + ".join(parts).replace("+ -", "- ") if parts else "0.0"
        if not covered >= set(layout) or not arrays:  # broadcasting alone would not give a full float array
            code = f"_full(({''.join(f'{size_of(i)}, ' for i in layout)}), {code})"
        self.equations.append(Equation(out, "eval", (), code, comment))
        self.cache[code] = out
        return out

    def unscaled(self, term: Term) -> Term:
        """`term` reading T where it read a number times T.

        `Cbar = -3 C^2 Ytildebar` with `Ytildebar = 2 Ytilde` is `-6 C^2 Ytilde`: one statement
        and one product less.
        """
        coeff, factors, changed = term.coeff, list(term.factors), True
        while changed:
            changed = False
            for k, f in enumerate(factors):
                name = f.base.label.name if isinstance(f, sp.Indexed) else f.name if f.is_Symbol else None
                d = self.model.definitions.get(name)
                c, rest = d.expr.as_coeff_Mul() if d is not None else (None, None)
                if not (c is not None and c.is_Number and (isinstance(rest, sp.Indexed) or rest.is_Symbol)):
                    continue
                own = tuple(d.indices)
                if tuple(getattr(rest, "indices", ())) != own or len(set(own)) != len(own):
                    continue
                at = tuple(getattr(f, "indices", ()))
                if any(not o.is_Symbol and o != a for o, a in zip(own, at)):
                    continue  # read at a summed index where the copy has its fixed 0
                coeff, factors[k], changed = coeff * c, rest.xreplace(dict(zip(own, at))), True
        return replace(term, coeff=coeff, factors=tuple(factors)) if factors != list(term.factors) else term

    def unit_axis(self, form: IndexForm, bindings: dict) -> tuple[IndexForm, sp.Symbol | None]:
        """`form` with every fixed index 0 read as its output's one size-1 axis, and that axis.

        `C[i,0] = B[i,k] W2[k,0]` is then `B @ W2`, and dW2[m,n] = B[i,m] Cbar[i,0] delta(0,n),
        with n of length 1, is `B.T @ Cbar`: no delta array, no views dropping and adding the axis.
        """
        units = [p for p, i in enumerate(form.free) if i.is_Integer or bindings.get(i) in self.units]
        if len(units) != 1:
            return form, None
        entries = {e for t in form.terms for f in t.factors for e in f.atoms(sp.Indexed, sp.KroneckerDelta)}
        if any(sum(i.is_Integer for i in e.indices) > 1 for e in entries if isinstance(e, sp.Indexed)):
            return form, None
        u = _UNIT if form.free[units[0]].is_Integer else form.free[units[0]]

        def unit(e):
            if isinstance(e, sp.Indexed):
                return e.base[tuple(u if i.is_Integer else i for i in e.indices)]
            return sp.KroneckerDelta(*[u if i.is_Integer else i for i in e.args])
        swap = {e: unit(e) for e in entries if any(a.is_Integer for a in e.args)}
        terms = tuple(replace(t, factors=tuple(f for f in (g.xreplace(swap) for g in t.factors) if f != 1))
                      for t in form.terms)
        return IndexForm(terms, tuple(u if p == units[0] else i for p, i in enumerate(form.free))), u

    def _bindings(self, term: Term) -> dict:
        found = {}
        for f in term.factors:
            for e in sp.preorder_traversal(f):
                if isinstance(e, sp.Indexed):
                    for axis, i in enumerate(e.indices):
                        if i.is_Symbol:
                            found.setdefault(i, (e.base.label.name, axis))
        return found

    def term(self, term: Term, order: list, size_of) -> tuple[str | None, tuple, str]:
        """Lower one term; returns (variable, its axes, scalar coefficient source)."""
        printer = _Printer(order, size_of, self.var_of)
        coeff_parts = []
        groups: list[tuple[set, list]] = []   # (indices, factors) to fuse elementwise
        plain: list[sp.Indexed] = []
        for k, f in enumerate(term.factors):
            indices = free_indices(f)
            if indices and not free_indices(written := inline_definitions(f)):
                # f(t) = 2 t: f' is constant; an index only f used is still summed, and counts its length
                others = {i for g in term.factors[:k] + term.factors[k + 1:] for i in free_indices(g)}
                coeff_parts.extend(size_of(i) for i in indices if i not in order and i not in others)
                f, indices = written, ()
            if not indices:
                coeff_parts.append(printer.atom(f))
            elif isinstance(f, sp.Indexed) and all(i.is_Symbol for i in f.indices) \
                    and len(set(f.indices)) == len(f.indices):
                plain.append(f)
            else:
                groups.append((set(indices), [f]))
        self._note_abstract(term)
        groups.sort(key=lambda g: -len(g[0]))
        fused: list[tuple[set, list]] = []
        for indices, members in groups:
            home = next((g for g in fused if indices <= g[0]), None)
            (home[1].extend(members) if home else fused.append((indices, list(members))))
        for p in list(plain):
            home = next((g for g in fused if set(p.indices) <= g[0]), None)
            if home:
                home[1].append(p)
                plain.remove(p)
        operands = [(self.var_of(p.base.label.name), tuple(p.indices)) for p in plain]
        number = term.coeff
        symbols = {i for i in order if i not in _SLOTS}
        if not operands and len(fused) == 1 and fused[0][0] == symbols:  # one product: scaled inside it
            _, var, local = self.fuse(fused[0][1], size_of, order, scale=(number, coeff_parts))
            return var, local, ""
        for indices, members in fused:
            c, var, local = self.fuse(members, size_of, order if indices == symbols else None)
            number *= c
            operands.append((var, local))
        if number != 1:
            coeff_parts.insert(0, printer.atom(number))
        coeff = "*".join(coeff_parts)
        if not operands:
            return None, (), coeff or "1.0"
        out_indices = tuple(i for i in order if any(i in ix for _, ix in operands) and i not in _SLOTS)
        if len(operands) == 1 and set(operands[0][1]) - set(_SLOTS) == set(out_indices):
            return operands[0][0], operands[0][1], coeff
        var, indices = self.contract(operands, out_indices)
        return var, indices, coeff

    def contract(self, operands: list, out: tuple) -> tuple[str, tuple]:
        """Contract operands pairwise where that is a Hadamard or a matrix product (BLAS).

        Products whose result matches another operand come first; opt_einsum does the rest.
        """
        operands = list(operands)
        while len(operands) > 1:
            step = self._hadamard(operands) or self._pair(operands, out) or self._gram(operands, out) \
                or self._scale(operands, out)
            if step is None:
                break
            used, *results = step
            operands = [o for k, o in enumerate(operands) if k not in used] + results
        if len(operands) == 1 and set(operands[0][1]) == set(out) and len(operands[0][1]) == len(out):
            return operands[0]
        return self.einsum(operands, out), out

    def _hadamard(self, operands):
        for k, (va, ia) in enumerate(operands):
            for m in range(k + 1, len(operands)):
                vb, ib = operands[m]
                if set(ia) == set(ib) and len(set(ia)) == len(ia) and len(set(ib)) == len(ib):
                    code = f"{align(va, ia, list(ia))}*{align(vb, ib, list(ia))}"
                    return {k, m}, (self.emit(code), tuple(ia))
        return None

    def _gram(self, operands, out):
        """X.T @ diag(s) @ X with s >= 0 as Xs.T @ Xs, where Xs = X*sqrt(s).

        numpy's matmul of one array with its own transpose is BLAS syrk, half the work of a
        general product.
        """
        if len(operands) != 3:
            return None
        for k, (vs, small) in enumerate(operands):
            (va, ia), (vb, ib) = [o for m, o in enumerate(operands) if m != k]
            if vs not in self.nonnegative or va != vb or len(ia) != 2 or len(ib) != 2 or len(set(small)) < len(small):
                continue
            shared = [i for i in ia if i in ib]
            if len(shared) != 1 or ia.index(shared[0]) != ib.index(shared[0]) or tuple(small) != tuple(shared) \
                    or shared[0] in out or ia == ib:
                continue
            scaled = self.emit(f"{va}*{align(f'np.sqrt({vs})', small, list(ia))}")
            other = tuple(shared[0] if i == shared[0] else next(j for j in ib if j != shared[0]) for i in ia)
            return {0, 1, 2}, (scaled, tuple(ia)), (scaled, other)
        return None

    def _scale(self, operands, out):
        """A factor over some of another's axes, broadcast into it.

        `X.T @ diag(s) @ X` becomes `X.T @ (X*s[:, None])`, a matrix product, where one einsum
        would loop over three operands. Only where products are left to do, or where the product
        is the result (no sum after it).
        """
        unique = [len(set(ix)) == len(ix) for _, ix in operands]
        for k, (vs, small) in sorted(enumerate(operands), key=lambda o: len(o[1][1])):
            bigger = [(len(ix), m) for m, (_, ix) in enumerate(operands)
                      if m != k and unique[m] and set(small) < set(ix)]
            if not unique[k] or not bigger:
                continue
            m = min(bigger)[1]
            vb, ib = operands[m]
            if len(operands) > 2 or set(ib) == set(out):
                return {k, m}, (self.emit(f"{vb}*{align(vs, small, list(ib))}"), tuple(ib))
        return None

    def _pair(self, operands, out):
        """The best two-operand matrix product, as (positions used, (variable, axes))."""
        users: dict = {}
        for n, (_, ix) in enumerate(operands):
            for i in set(ix):
                users.setdefault(i, []).append(n)
        pairs = sorted({tuple(u) for i, u in users.items() if len(u) == 2 and i not in out})
        candidates = []
        for k, m in pairs:  # a summed index shared by exactly these two: a matrix product, maybe
            (va, ia), (vb, ib) = operands[k], operands[m]
            keep = tuple(dict.fromkeys(i for i in ia + ib if i in out or set(users[i]) - {k, m}))
            others = [ix for n, (_, ix) in enumerate(operands) if n not in (k, m)]
            twin = next((ix for ix in others if set(ix) == set(keep)), None)
            if twin is not None:  # lay the product out like the operand it will multiply
                keep = tuple(twin)
            elif set(keep) <= set(out):
                keep = tuple(i for i in out if i in keep)
            code = _matmul((va, ia), (vb, ib), keep)
            if code:
                candidates.append((twin is None, k, m, code, keep))
        if not candidates:
            return None
        _, k, m, code, keep = min(candidates, key=lambda c: c[0])
        (va, ia), (vb, ib) = operands[k], operands[m]
        letter = {i: get_symbol(n) for n, i in enumerate(dict.fromkeys(ia + ib))}
        spec = f"np.einsum('{_letters(ia, letter)},{_letters(ib, letter)}->{_letters(keep, letter)}', {va}, {vb})"
        return {k, m}, (self.emit(code, spec=spec), keep)

    def fuse(self, members: list, size_of, layout=None, scale=None) -> tuple[sp.Expr, str, tuple]:
        """One elementwise equation for a group of factors; returns (constant, variable, axes).

        Numeric constants come out (they scale the smaller result instead), unless `scale`
        (a number and scalar sources) asks to multiply them in: then onto the factors over
        the fewest indices, one pass less than scaling the product. Factors over fewer indices
        are multiplied first, so `Ytilde * f2'(C)` is formed over the batch before it is
        broadcast against `f1'(A)`.
        """
        number, by_set = sp.S.One, {}
        widest = max(members, key=lambda f: len(free_indices(f)))
        local = layout or list(dict.fromkeys([*free_indices(widest), *(i for f in members for i in free_indices(f))]))
        written = [inline_definitions(m) for m in members]
        nonnegative = all(_nonnegative(m.as_coeff_Mul()[1]) for m in written)
        for member in self.once(written, local, size_of):
            c, rest = member.as_coeff_Mul()
            number *= c
            for f in sp.Mul.make_args(rest):
                if f != 1:
                    by_set.setdefault(frozenset(free_indices(f)), []).append(f)
        printer = _Printer(local, size_of, self.var_of, self.size1_of)
        gates = [g for fs in by_set.values() for f in fs if (g := _gate(f)) is not None]
        if gates and any(_gate(f) is None for fs in by_set.values() for f in fs):
            # relu'(x) * g is where(x > 0, g, 0): 0 where relu is flat even if g is inf there
            # (sqrt(relu(x))' at x < 0), as torch and jax take relu's derivative; relu'(x)^2 too
            by_set = {k: rest for k, fs in by_set.items() if (rest := [f for f in fs if _gate(f) is None])}
        else:
            gates = []
        codes = {key: "*".join(printer.atom(f) for f in fs) for key, fs in by_set.items()}
        codes = {key: f"({c})" if len(by_set[key]) > 1 else c for key, c in codes.items()}
        if scale is not None:
            number *= scale[0]
            factor = "*".join(([printer.atom(number)] if number != 1 else []) + list(scale[1]))
            if factor and codes:
                smallest = min(codes, key=len)
                codes[smallest] = f"{factor}*{codes[smallest]}"
            elif factor:
                codes[frozenset()] = factor
            number = sp.S.One
        parts = [codes[key] for key in sorted(codes, key=len)]
        code = "*".join(parts) if parts else "1.0"
        if gates:
            condition = " & ".join(f"({printer.p(g.args[0])} > 0)" for g in dict.fromkeys(gates))
            code = f"np.where({condition}, {code}, 0.0)"
        var = self.emit(code, " * ".join(map(index_str, members)))
        if nonnegative and scale is None:
            self.nonnegative.add(var)
        return number, var, tuple(local)

    def once(self, exprs: list, local: list, size_of) -> list:
        """`exprs` with each call that occurs more than once computed once, over its own axes.

        sigmoid(z) in sigmoid(z) (1 - sigmoid(z)) is evaluated once, not twice.
        """
        counts = Counter(e for x in exprs for e in sp.preorder_traversal(x)
                         if isinstance(e, sp.Function) and free_indices(e))
        repeated = [e for e, n in counts.items() if n > 1]
        swap = {}
        for call in [e for e in repeated if not any(r != e and r.has(e) for r in repeated)]:
            axes = [i for i in local if i in free_indices(call)]
            var = self.emit(_Printer(axes, size_of, self.var_of, self.size1_of).p(call), index_str(call))
            self.computed.add(var)
            swap[call] = sp.IndexedBase(var)[tuple(axes)]
        return [x.xreplace(swap) for x in exprs] if swap else exprs

    def einsum(self, operands, out_indices) -> str:
        letter: dict = {}
        for _, indices in operands:
            for i in indices:
                letter.setdefault(i, get_symbol(len(letter)))
        if len(letter) > MAX_LETTERS:
            raise IndexNotationError(f"one contraction would run over {len(letter)} indices; numpy's einsum takes "
                                     f"at most {MAX_LETTERS}: split the statement into smaller ones")
        subscripts = ",".join(_letters(ix, letter) for _, ix in operands) + "->" + _letters(out_indices, letter)
        key = f"einsum('{subscripts}', {', '.join(v for v, _ in operands)})"
        if key in self.cache:
            return self.cache[key]
        var = self.temp()
        direct = _reduction(operands[0], out_indices) if len(operands) == 1 else ""  # products: see contract
        self.equations.append(Equation(var, "einsum", tuple(v for v, _ in operands), subscripts, code=direct))
        self.cache[key] = var
        return var

    def _note_abstract(self, term: Term) -> None:
        for f in term.factors:
            for e in sp.preorder_traversal(inline_definitions(f)):
                if isinstance(e, UserFunction):
                    self.abstract[e.label()] = None

    def plan(self, outputs: dict[str, str]) -> EinsumPlan:
        inputs = tuple(n for n in self.model.inputs if n in self.inputs)
        equations = _name_directly(self.equations, outputs)
        if len(outputs) > 1:
            equations = _early(equations, set(outputs.values()))
        return EinsumPlan(inputs, equations, outputs, tuple(self.abstract), {n: variable(n) for n in self.defined})


NAME = re.compile(r"(?<![\w.])[A-Za-z_]\w*")  # a name an equation may read


def reads(e: Equation) -> set[str]:
    """Every name an equation's source mentions (a few more than it reads: never fewer)."""
    return set(NAME.findall(e.code or e.text)) | set(e.args)


def _early(equations: tuple[Equation, ...], outputs: set[str]) -> tuple[Equation, ...]:
    """Each result (and what only it reads) computed as soon as its operands are.

    dW2 = H1.T @ Bbar comes right after Bbar, not after every other adjoint: Bbar is dead sooner,
    so all gradients of a deep network keep about one adjoint alive at a time, as backprop does.
    """
    position = {e.out: k for k, e in enumerate(equations)}
    deps = [{position[r] for r in reads(e) if position.get(r, k) < k} for k, e in enumerate(equations)]
    readers: dict[int, set] = {}
    for k, ds in enumerate(deps):
        for d in ds:
            readers.setdefault(d, set()).add(k)
    late: set[int] = set()
    for k in reversed(range(len(equations))):
        if equations[k].out in outputs or readers.get(k) and readers[k] <= late:
            late.add(k)
    order: list[int] = []
    placed: set[int] = set()
    waiting = sorted(late)

    def place_ready():
        while ready := [k for k in waiting if deps[k] <= placed]:
            order.extend(ready)
            placed.update(ready)
            waiting[:] = [k for k in waiting if k not in placed]
    place_ready()
    for k in range(len(equations)):
        if k not in late:
            order.append(k)
            placed.add(k)
            place_ready()
    return tuple(equations[k] for k in order)


def _name_directly(equations: list[Equation], outputs: dict) -> tuple[Equation, ...]:
    """`H = _t2`: compute H where _t2 was computed, and read H wherever _t2 was read (one pass)."""
    aliases: dict[str, Equation] = {}
    for e in equations:
        if e.op == "eval" and re.fullmatch(r"_t\d+", e.text) and e.text not in outputs.values():
            aliases.setdefault(e.text, e)
    dropped = {id(e) for e in aliases.values()}

    def renamed(text: str) -> str:
        return _TEMP.sub(lambda m: aliases[m.group(1)].out if m.group(1) in aliases else m.group(1), text)
    out = []
    for e in equations:
        if id(e) in dropped:
            continue
        if e.out in aliases:
            e = replace(e, out=aliases[e.out].out, comment=aliases[e.out].comment)
        out.append(replace(e, args=tuple(aliases[a].out if a in aliases else a for a in e.args),
                           text=renamed(e.text), code=renamed(e.code), spec=renamed(e.spec)))
    return tuple(out)


_TEMP = re.compile(r"(?<![\w.])(_t\d+)(?!\w)")
