"""The chain rule in index notation, through named intermediates, one fresh index per link.

    d of / d W[m,n] = (direct part) + sum over each intermediate T used in `of`:
        sum[mu,nu]( d of / d T[mu,nu] ) ( d T[mu,nu] / d W[m,n] )

Local derivatives come from sympy (`d X[i,j] / d X[m,n] = delta(i,m) delta(j,n)`); a link
`d T[mu,nu] / d W[m,n]` is T's definition with its left-hand side renamed to mu,nu (a
fixed axis `T[i,0]` contributes `delta(nu,0)`) and its summed indices made fresh.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import count

import sympy as sp

from .errors import UnknownNameError
from .symbolic import ESum, Extent, Model, Partial, base, index, index_names, tensor_names

LINK_NAMES = ("mu", "nu", "l", "s", "r", "e", "alpha", "beta", "gamma", "kappa", "rho", "sigma", "tau",
              "phi", "chi", "psi", "omega", "eta", "zeta", "xi")
# Links through the elementwise statements between `of` and its first contraction (the
# article's Ytilde = Y - Yhat, Yhat = f2(C)) take these, so that the links the article writes
# out, C[mu,nu], B[l,s], A[r,e], have its letters.
EARLY_NAMES = ("alpha", "beta", "gamma", "kappa", "rho", "sigma", "tau", "phi", "chi", "psi", "omega", "eta",
               "zeta", "xi")
WRT_NAMES = ("m", "n", "p", "q", "u", "v", "w", "o")


@dataclass(frozen=True, slots=True)
class Step:
    """One line of the derivation: a title, and `lhs = expr` in sympy (or matrix text)."""

    title: str
    lhs: sp.Expr
    expr: sp.Expr | str
    renames: tuple[tuple[str, str], ...] = ()  # index renames made by contracting deltas
    latex_expr: str | None = None              # LaTeX of a matrix-form `expr`
    subject: str = ""                          # a tensor named after the title

    @property
    def text(self) -> str:
        from .render import index_str
        rhs = self.expr if isinstance(self.expr, str) else index_str(self.expr)
        lhs = self.lhs if isinstance(self.lhs, str) else index_str(self.lhs)
        title = self.title + (f" {self.subject}" if self.subject else "")
        title += " (" + ", ".join(f"{a}->{b}" for a, b in self.renames) + ")" if self.renames else ""
        return f"{title}:\n    {lhs} = {rhs}"

    @property
    def latex(self) -> str:
        """The equation in LaTeX, `lhs &= rhs`: align* rows, a long right-hand side continued on more."""
        from .latex import equation_latex
        return equation_latex(self)

    def __str__(self) -> str:
        return self.text

    def _repr_latex_(self) -> str:
        from .latex import notebook_latex
        return notebook_latex([self])


class Names:
    """Hands out index names not used yet; remembers the order, so younger names go first."""

    def __init__(self, taken: set[str]):
        self.taken, self.order = set(taken), {}
        self._counter = count(1)
        self._suffix: dict[str, int] = {}  # wanted -> the last suffix tried: names are never given back

    def fresh(self, wanted: str) -> sp.Symbol:
        k = self._suffix.get(wanted, 1)
        name = wanted if k == 1 else f"{wanted}{k}"
        while name in self.taken:
            k += 1
            name = f"{wanted}{k}"
        self._suffix[wanted] = k
        return self.claim(name)

    def claim(self, name: str) -> sp.Symbol:
        self.taken.add(name)
        self.order[name] = next(self._counter)
        return index(name)

    def link(self, early: bool = False) -> sp.Symbol:
        for name in EARLY_NAMES if early else LINK_NAMES:
            if name not in self.taken:
                return self.claim(name)
        return self.fresh("t")

    def age(self, symbol: sp.Symbol) -> int:
        return self.order.get(symbol.name, 0)


@dataclass(frozen=True, slots=True)
class RawDerivative:
    """d of / d wrt before the deltas are contracted."""

    expr: sp.Expr                   # every link expanded: a sum of products with deltas
    free: tuple[sp.Expr, ...]       # output pattern: of's left-hand side, then wrt's indices
    steps: tuple[Step, ...]
    names: Names


def entry(name: str, indices) -> sp.Expr:
    """The entry `name[indices]` for sympy indices (a plain symbol when there are none)."""
    return base(name)[tuple(indices)] if indices else sp.Symbol(name, real=True)


def power_rule(e: sp.Expr) -> sp.Expr:
    """`e` with each n b^n / b of sympy's derivative of b^n (n not a number) written n b^(n - 1).

    At b = 0 the quotient is 0 / 0, nan, where the derivative n b^(n - 1) is 0 for n > 1 (as
    jax and torch give it): `(c sum[d](E[d]))^(2 x)` with c = 0 has the derivative 0 by E.
    """
    if not e.has(sp.Pow):
        return e

    def joined(m: sp.Mul) -> sp.Expr:
        powers = {f.base: f for f in m.args if f.is_Pow and not f.exp.is_number}
        over = [f for f in m.args if f.is_Pow and f.exp == -1 and f.base in powers]
        if not over:
            return m
        bases = {o.base for o in over}
        kept = [f for f in m.args if not (f.is_Pow and f.base in bases and (f.exp == -1 or f is powers[f.base]))]
        return sp.Mul(*kept, *[sp.Pow(b, powers[b].exp - 1) for b in bases])
    return e.replace(lambda n: n.is_Mul, joined)


class _Chain:
    def __init__(self, model: Model, wrt: str, wrt_entry: sp.Expr, names: Names, early: frozenset = frozenset()):
        self.model, self.wrt, self.wrt_entry, self.names = model, wrt, wrt_entry, names
        self.early = early  # the statements between `of` and its first contraction
        self.steps: list[Step] = []

    def local(self, expr: sp.Expr) -> sp.Expr:
        """One level of the chain rule; deeper links stay as `Partial` placeholders."""
        parts = [power_rule(expr.diff(self.wrt_entry))]
        for name in tensor_names(expr):
            if name not in self.model.definitions or not (self.model.depends(name, self.wrt)):
                continue
            links = [self.names.link(name in self.early) for _ in range(self.model.rank(name))]
            link_entry = entry(name, links)
            outer = power_rule(expr.diff(link_entry))
            extents = [Extent(s.name, name, axis) for axis, s in enumerate(links)]
            parts.append(ESum(outer * Partial(link_entry, self.wrt_entry), links, extents))
        return sp.Add(*parts)

    def definition_at(self, entry: sp.Expr) -> sp.Expr:
        """T's right-hand side as a function of the link indices of `entry`."""
        name = entry.base.label.name if isinstance(entry, sp.Indexed) else entry.name
        d = self.model.definitions[name]
        links = entry.indices if isinstance(entry, sp.Indexed) else ()
        rename, fixed = {}, sp.S.One
        for own, link in zip(d.indices, links):
            if own.is_Symbol:
                rename[own] = link
            else:
                fixed *= sp.KroneckerDelta(link, own)
        for own in sorted(index_names(d.expr) - {s.name for s in rename}):
            rename[index(own)] = self.names.fresh(own)
        return fixed * d.expr.xreplace(rename)

    def expand(self, expr: sp.Expr) -> sp.Expr:
        """Replace every Partial by its own chain, recording each link as a step."""
        for partial in sorted(expr.atoms(Partial), key=sp.default_sort_key):
            entry = partial.args[0]
            rhs = self.definition_at(entry)
            link = self.local(rhs)
            name = entry.base.label.name if isinstance(entry, sp.Indexed) else entry.name
            self.steps.append(Step("Link through", partial, link, subject=name))
            expr = expr.xreplace({partial: self.expand(link)})
        return expr


def differentiate(model: Model, of: str, wrt: str, *, of_expr=None, of_free=None) -> RawDerivative:
    """D of / d wrt[m,n,...] with every link expanded (deltas not yet contracted)."""
    if wrt not in model.inputs:
        known = ", ".join(model.inputs)
        raise UnknownNameError(f"cannot differentiate with respect to {wrt}: it is not an input "
                               f"of the program (inputs: {known})")
    if of_expr is None:
        if of not in model.definitions:
            raise UnknownNameError(f"{of} is not a target of the program (targets: {', '.join(model.targets)})")
        d = model.definitions[of]
        of_expr, of_free = d.expr, d.indices
    # Every link renames all of its statement's indices, so only `of`'s own are taken: a link's
    # summed indices keep the program's letters (X[r,j], W2[k,nu]) where they are still free.
    names = Names({s.name for s in of_free if s.is_Symbol} | index_names(of_expr))
    free_names = [n for n in WRT_NAMES if n not in names.taken]
    wrt_indices = [names.fresh(free_names[k] if k < len(free_names) else "m") for k in range(model.inputs[wrt])]
    names.order.clear()
    wrt_entry = entry(wrt, wrt_indices)
    chain = _Chain(model, wrt, wrt_entry, names, _before_contraction(model, of_expr))
    of_entry = entry(of, of_free)
    first = chain.local(of_expr)
    chain.steps.append(Step("Chain rule", Partial(of_entry, wrt_entry), first))
    expr = chain.expand(first)
    return RawDerivative(expr, tuple(of_free) + tuple(wrt_indices), tuple(chain.steps), names)



def _before_contraction(model: Model, of_expr: sp.Expr) -> frozenset:
    """The statements `of` reads through elementwise statements only, that contract nothing themselves."""
    early, todo = set(), tensor_names(of_expr)
    while todo:
        name = todo.pop()
        d = model.definitions.get(name)
        if d is not None and name not in early and not d.expr.has(ESum):
            early.add(name)
            todo.extend(tensor_names(d.expr))
    return frozenset(early)
