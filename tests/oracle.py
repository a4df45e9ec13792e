"""An independent reading of the einmlp language, from source text to values (the test oracle).

It shares nothing with einmlp: its own tokenizer, recursive-descent parser and summation
rules, written from design.md section 1 alone, evaluated with autograd.numpy so that
`autograd.jacobian`/`hessian` of it are the reference derivatives. If einmlp misreads the
language (sums the wrong index, or over the wrong scope), the two disagree.

How the summation rules are read (design.md §1):
  1. Indices on the left-hand side are never summed ("protected"); so are the indices an
     enclosing `sum[...]` binds, until that sum sums them.
  2. A product is a chain of factors joined by juxtaposition, `*` or `/` (`a / b` is the
     factor `b^-1`). An unprotected index in two or more factors is summed over the
     product. Each parenthesised expression, call argument and `sum[...]` body is
     evaluated on its own, so its products are scoped there: `1/(y[h] y[h])` is 1/sum_h y_h^2.
  3. Indices still free at the end of the right-hand side and not on the left are summed.
  4. `sum[i,j](e)` sums i and j of e.
  5. `+`/`-` terms: one term must carry every free index of the chain; smaller terms are
     broadcast. An index implicitly summed anywhere inside one term (rules 2) and free in
     another is ambiguous: an error.
A repeated index inside one reference takes the diagonal and counts as one factor; an integer
index selects that entry (a size-1 axis), and on the left declares a size-1 axis.
"""

from __future__ import annotations

import functools
import re

import autograd
import autograd.numpy as anp
import numpy

BUILTINS = {
    "exp": anp.exp, "log": anp.log, "tanh": anp.tanh, "sqrt": anp.sqrt, "abs": anp.abs,
    "sin": anp.sin, "cos": anp.cos,
    "sigmoid": lambda x: 0.5 * (1 + anp.tanh(0.5 * x)),  # no overflow for large |x|
    "relu": lambda x: anp.maximum(x, 0.0),
    "softplus": lambda x: anp.logaddexp(0.0, x),
}
_TOKEN = re.compile(r"(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)|(?P<name>[A-Za-z_]\w*)"
                    r"|(?P<op>\*\*|[-+*/^()\[\],=])|(?P<space>[ \t\r]+)")


class OracleError(Exception):
    """The source is not a well-formed program under the oracle's reading of design.md."""


# ---------------------------------------------------------------- parsing
class _Parser:
    """One statement's tokens -> a tree of tuples: ("num", v), ("ref", name, indices),
    ("call", f, arg), ("sum", names, body), ("neg", e), ("pow", base, exponent),
    ("prod", [(reciprocal, factor)...]), ("add", [(sign, term)...])."""

    def __init__(self, line: str):
        self.toks, pos = [], 0
        while pos < len(line):
            m = _TOKEN.match(line, pos)
            if not m:
                raise OracleError(f"unexpected character {line[pos]!r} in {line!r}")
            pos = m.end()
            if m.lastgroup != "space":
                self.toks.append((m.lastgroup, m.group()))
        self.toks.append(("end", ""))
        self.pos, self.line = 0, line

    def peek(self, k=0):
        return self.toks[self.pos + k]

    def take(self, text=None):
        tok = self.toks[self.pos]
        if text is not None and tok[1] != text:
            raise OracleError(f"expected {text!r}, got {tok[1]!r} in {self.line!r}")
        self.pos += 1
        return tok

    def statement(self):
        name = self.take()
        if name[0] != "name":
            raise OracleError(f"a statement starts with a name: {self.line!r}")
        if self.peek()[1] == "(":  # f(x) = body
            self.take("(")
            param = self.take()[1]
            self.take(")"), self.take("=")
            return "def", name[1], param, self.finish()
        indices = self.index_list() if self.peek()[1] == "[" else ()
        self.take("=")
        return "let", name[1], indices, self.finish()

    def finish(self):
        e = self.expr()
        if self.peek()[0] != "end":
            raise OracleError(f"unexpected {self.peek()[1]!r} in {self.line!r}")
        return e

    def index_list(self):
        self.take("[")
        out = []
        while True:
            kind, text = self.take()
            out.append(int(text) if kind == "num" else text)
            if self.take()[1] == "]":
                return tuple(out)

    def expr(self):  # term (('+'|'-') term)*
        terms = [(+1, self.term())]
        while self.peek()[1] in ("+", "-"):
            terms.append((+1 if self.take()[1] == "+" else -1, self.term()))
        return terms[0][1] if len(terms) == 1 else ("add", terms)

    def term(self):  # unary (('*' | '/' | juxtaposition) unary)*, left to right
        factors = [(False, self.unary())]
        while True:
            kind, text = self.peek()
            if text in ("*", "/"):
                self.take()
                factors.append((text == "/", self.unary()))
            elif kind in ("num", "name") or text == "(":
                factors.append((False, self.unary()))
            else:
                return factors[0][1] if len(factors) == 1 else ("prod", factors)

    def unary(self):  # '-' binds looser than '^': -x^2 = -(x^2)
        if self.peek()[1] == "-":
            self.take()
            return "neg", self.unary()
        if self.peek()[1] == "+":
            self.take()
            return self.unary()
        base = self.primary()
        if self.peek()[1] in ("^", "**"):
            self.take()
            return "pow", base, self.unary()  # right-associative; x^-1 allowed
        return base

    def primary(self):
        kind, text = self.take()
        if kind == "num":
            return "num", float(text)
        if text == "(":
            e = self.expr()
            self.take(")")
            return e
        if kind != "name":
            raise OracleError(f"unexpected {text!r} in {self.line!r}")
        if text == "sum" and self.peek()[1] == "[":
            names = self.index_list()
            self.take("(")
            body = self.expr()
            self.take(")")
            return "sum", names, body
        if self.peek()[1] == "(":
            self.take("(")
            arg = self.expr()
            self.take(")")
            return "call", text, arg
        return "ref", text, self.index_list() if self.peek()[1] == "[" else ()


@functools.lru_cache(maxsize=512)
def parse(source: str):
    """Source text -> (function definitions {name: (param, body)}, [(name, lhs indices, rhs)])."""
    defs, statements = {}, []
    code = "\n".join(line.split("#", 1)[0] for line in source.split("\n"))  # comments end at the line break
    for raw in re.split(r"[\n;]", code):
        line = raw.strip()
        if re.fullmatch(r"[A-Za-z]\w* is [\w ]+", line):  # a declaration (X is 10 x 3): it changes no value
            continue
        if line:
            s = _Parser(line).statement()
            if s[0] == "def":
                defs[s[1]] = (s[2], s[3])
            else:
                lhs = s[2]
                names = [i for i in lhs if isinstance(i, str)]
                if len(set(names)) < len(names):
                    raise OracleError(f"an index repeats on the left of {line!r}")
                statements.append((s[1], lhs, s[3]))
    return defs, statements


# ---------------------------------------------------------------- evaluation
class _Val:
    """A value, the index named by each of its axes, and the indices summed implicitly inside."""

    def __init__(self, array, indices=(), implicit=frozenset()):
        self.array, self.indices, self.implicit = array, tuple(indices), frozenset(implicit)


def _extents(vals, where):
    sizes = {}
    for v in vals:
        for i, n in zip(v.indices, anp.shape(v.array)):
            if sizes.setdefault(i, n) != n:
                raise OracleError(f"index {i} has extents {sizes[i]} and {n} in {where}")
    return sizes


def _align(v: _Val, order):
    """v's array laid out over `order`, with size-1 axes for the indices it lacks."""
    if not v.indices:
        return v.array
    perm = [v.indices.index(i) for i in order if i in v.indices]
    a = anp.transpose(v.array, perm) if perm != sorted(perm) else v.array
    extents = iter(anp.shape(a))
    return anp.reshape(a, [next(extents) if i in v.indices else 1 for i in order])


class _Elementwise:
    """A function's argument inside its body: any shape, used elementwise."""

    def __init__(self, array):
        self.array = array


class _Evaluator:
    def __init__(self, defs, functions, builtins=None):
        self.defs, self.functions, self.builtins = defs, functions or {}, builtins or BUILTINS

    def ev(self, e, env, protected) -> _Val:
        kind = e[0]
        if kind == "num":
            return _Val(e[1])
        if kind == "ref":
            return self.ref(e[1], e[2], env)
        if kind == "neg":
            v = self.ev(e[1], env, protected)
            return _Val(-v.array, v.indices, v.implicit)
        if kind == "call":
            v = self.ev(e[2], env, protected)
            return _Val(self.call(e[1], v.array), v.indices, v.implicit)
        if kind == "sum":
            v = self.ev(e[2], env, protected | set(e[1]))
            if any(i not in v.indices for i in e[1]):
                raise OracleError(f"sum[{','.join(e[1])}] over an index its body lacks")
            axes = tuple(v.indices.index(i) for i in e[1])
            return _Val(anp.sum(v.array, axis=axes), [i for i in v.indices if i not in e[1]], v.implicit)
        if kind == "pow":
            base, exponent = self.ev(e[1], env, protected), self.ev(e[2], env, protected)
            order = list(dict.fromkeys(base.indices + exponent.indices))
            _extents([base, exponent], "a power")
            return _Val(_align(base, order) ** _align(exponent, order), order, base.implicit | exponent.implicit)
        if kind == "prod":
            return self.product(e[1], env, protected)
        return self.add(e[1], env, protected)

    def product(self, factors, env, protected):
        vals = [self.ev(f, env, protected) for _, f in factors]
        _extents(vals, "a product")
        order = list(dict.fromkeys(i for v in vals for i in v.indices))
        summed = [i for i in order if i not in protected and sum(i in v.indices for v in vals) >= 2]
        result = 1.0
        for (reciprocal, _), v in zip(factors, vals):
            a = _align(v, order)
            result = result / a if reciprocal else result * a
        if summed:
            result = anp.sum(result, axis=tuple(order.index(i) for i in summed))
        implicit = frozenset(summed).union(*(v.implicit for v in vals))
        return _Val(result, [i for i in order if i not in summed], implicit)

    def add(self, terms, env, protected):
        vals = [self.ev(t, env, protected) for _, t in terms]
        _extents(vals, "a sum")
        widest = max(vals, key=lambda v: len(v.indices))
        for v in vals:
            if not set(v.indices) <= set(widest.indices):
                raise OracleError(f"terms with free indices {list(v.indices)} and {list(widest.indices)} "
                                  "cannot be added")
            for w in vals:
                if w is not v and v.implicit & set(w.indices):
                    raise OracleError(f"index {sorted(v.implicit & set(w.indices))} summed in one term, "
                                      "free in another")
        result = 0.0
        for (sign, _), v in zip(terms, vals):
            result = result + sign * _align(v, widest.indices)
        return _Val(result, widest.indices, frozenset().union(*(v.implicit for v in vals)))

    def ref(self, name, indices, env):
        if name not in env:
            raise OracleError(f"no value for {name}")
        a = env[name]
        if isinstance(a, _Elementwise):  # a function's parameter: its body is elementwise
            return _Val(a.array)
        if anp.ndim(a) != len(indices):
            raise OracleError(f"{name} has {anp.ndim(a)} axes, used with {len(indices)} indices")
        if any(isinstance(i, int) for i in indices):  # (a[()] of a 0-d input breaks autograd's second derivative)
            a = a[tuple(i if isinstance(i, int) else slice(None) for i in indices)]
        names = [i for i in indices if isinstance(i, str)]
        while len(set(names)) < len(names):  # X[i,i]: the diagonal, by a mask and a sum
            q = next(k for k, n in enumerate(names) if names.index(n) < k)
            p, n = names.index(names[q]), anp.shape(a)[q]
            if anp.shape(a)[p] != n:
                raise OracleError(f"index {names[q]} has extents {anp.shape(a)[p]} and {n} in {name}")
            mask = [n if k in (p, q) else 1 for k in range(len(names))]
            a = anp.sum(a * anp.reshape(anp.eye(n), mask), axis=q)
            names.pop(q)
        return _Val(a, names)

    def call(self, name, x):
        if name in self.builtins:
            return self.builtins[name](x)
        if name in self.defs:
            param, body = self.defs[name]
            # a body that reads nothing of its argument (half(x) = 0.5) still has the argument's shape
            return self.ev(body, {param: _Elementwise(x)}, set()).array + anp.zeros(anp.shape(x))
        fn = self.functions.get(name)
        if fn is None:
            raise OracleError(f"function {name} is neither built in, defined, nor given")
        if isinstance(fn, numpy.ufunc) and hasattr(anp, fn.__name__):
            fn = getattr(anp, fn.__name__)  # np.cos -> autograd.numpy.cos, which autograd differentiates
        return fn(x)

    def statement(self, lhs, rhs, env):
        v = self.ev(rhs, env, {i for i in lhs if isinstance(i, str)})
        names = [i for i in lhs if isinstance(i, str)]
        if any(i not in v.indices for i in names):
            raise OracleError(f"an index on the left, {names}, is not free on the right {list(v.indices)}")
        rest = [k for k, i in enumerate(v.indices) if i not in names]  # rule 3: summed at the end
        a = anp.sum(v.array, axis=tuple(rest)) if rest else v.array
        kept = [i for i in v.indices if i in names]
        a = anp.transpose(a, [kept.index(i) for i in names]) if len(names) > 1 else a
        shape = list(anp.shape(a))
        return anp.reshape(a, [1 if isinstance(i, int) else shape.pop(0) for i in lhs]) if len(lhs) != len(names) else a


def evaluate(source: str, arrays: dict, of: str | None = None, functions: dict | None = None, builtins=None):
    """The value of target `of` (default: the last statement), shaped like its left-hand side."""
    defs, statements = parse(source)
    ev, env = _Evaluator(defs, functions, builtins), dict(arrays)
    of = of or statements[-1][0]
    for name, lhs, rhs in statements:
        env[name] = ev.statement(lhs, rhs, env)
        if name == of:
            return env[name]
    raise OracleError(f"{of} is not a target")


def derivative(source: str, arrays: dict, of: str | None, wrt: str, order: int = 1, functions=None):
    """d^order of / d wrt^order by autograd over `evaluate`: shaped of.shape + wrt.shape (* order)."""
    def f(w):
        return evaluate(source, {**arrays, wrt: w}, of, functions)
    d = f
    for _ in range(order):
        d = autograd.jacobian(d)
    return d(numpy.array(arrays[wrt], dtype=float))


def _exact_builtins(mpmath) -> dict:
    """The built-in functions over numpy arrays of mpmath numbers (complex where the real ones are undefined)."""
    def lift(f):
        return numpy.frompyfunc(f, 1, 1)
    return {"exp": lift(mpmath.exp), "log": lift(mpmath.log), "tanh": lift(mpmath.tanh), "sqrt": lift(mpmath.sqrt),
            "abs": lift(abs), "sin": lift(mpmath.sin), "cos": lift(mpmath.cos),
            "sigmoid": lift(lambda v: 1 / (1 + mpmath.exp(-v))), "relu": lift(lambda v: v if v > 0 else 0 * v),
            "softplus": lift(lambda v: mpmath.log(1 + mpmath.exp(v)))}


def undefined_entries(source: str, arrays: dict, of: str | None = None, digits: int = 700):
    """Where the value of `of` is not a finite real number when computed with `digits` digits; None if unknown.

    Floats can hide it: with s = sigmoid(z) < 1, log(s^1e-300)^1e-300 is the power of a negative
    number, yet s^1e-300 rounds to 1 and the float value is 0^1e-300 = 0. 700 digits resolve
    every float64 (1 - 1e-300 is not 1 there). Abstract functions given as callables are unknown.
    """
    import mpmath  # noqa: PLC0415 (sympy's dependency)

    with mpmath.workdps(digits):
        exact = {n: numpy.frompyfunc(mpmath.mpf, 1, 1)(numpy.asarray(a, dtype=float)) for n, a in arrays.items()}
        try:
            value = evaluate(source, exact, of, builtins=_exact_builtins(mpmath))
        except Exception:  # noqa: BLE001 - an abstract function, or an operation mpmath refuses
            return None
        flat = numpy.asarray(value, dtype=object)
        return numpy.vectorize(lambda v: not (isinstance(v, mpmath.mpf) and mpmath.isfinite(v)), otypes=[bool])(flat)

