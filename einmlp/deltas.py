"""Contract Kronecker deltas against summed indices, then tidy the terms.

A raw derivative is a sum of products with nested sums and deltas. `normalize` flattens
it into terms `coeff * sum[summed](factor * factor * ...)`; `contract` applies the one
rule of the article, `sum[j] delta(j,m) F(j) = F(m)`, renaming the younger index; `tidy`
collects equal terms and simplifies each elementwise factor.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import sympy as sp

from .grad import Names, Step
from .symbolic import ESum, Extent, free_indices, tensor_set


@dataclass(frozen=True, slots=True)
class Term:
    """coeff * sum over `summed` of the product of `factors` (each elementwise)."""

    coeff: sp.Expr
    summed: tuple[sp.Symbol, ...]
    factors: tuple[sp.Expr, ...]
    extents: tuple[Extent, ...] = ()  # where each summed index gets its length

    def expr(self) -> sp.Expr:
        return self.coeff * ESum(sp.Mul(*self.factors), self.summed, self.extents)

    def indices(self) -> set[sp.Symbol]:
        return set(free_indices(sp.Mul(*self.factors, evaluate=False))) | set(self.summed)


@dataclass(frozen=True, slots=True)
class IndexForm:
    """A derivative after contraction: a sum of terms over the free pattern `free`."""

    terms: tuple[Term, ...]
    free: tuple[sp.Expr, ...]  # index symbols and Integer(0), the output's axes

    def expr(self) -> sp.Expr:
        return sp.Add(*[t.expr() for t in self.terms])


def _structural(e: sp.Expr) -> bool:
    return e.has(ESum, sp.KroneckerDelta)


def _rename(term: Term, mapping: dict) -> Term:
    return Term(term.coeff, tuple(mapping.get(s, s) for s in term.summed),
                tuple(f.xreplace(mapping) for f in term.factors), term.extents)


class _Normalizer:
    def __init__(self, names: Names):
        self.names = names

    def merge(self, a: Term, b: Term) -> Term:
        """The product of two terms, renaming summed indices that would capture each other."""
        if b.summed:  # (an elementwise product has nothing to rename: skip the walk)
            clash_b = set(b.summed) & a.indices()
            b = _rename(b, {s: self.names.fresh(s.name) for s in clash_b})
        if a.summed:
            clash_a = set(a.summed) & b.indices()
            a = _rename(a, {s: self.names.fresh(s.name) for s in clash_a})
        return Term(a.coeff * b.coeff, a.summed + b.summed, a.factors + b.factors, a.extents + b.extents)

    def terms(self, e: sp.Expr) -> list[Term]:
        if e.is_Number:
            return [Term(e, (), ())] if e != 0 else []
        if isinstance(e, sp.Add) and _structural(e):
            return [t for a in e.args for t in self.terms(a)]
        if isinstance(e, sp.Mul):
            result = [Term(sp.S.One, (), ())]
            for arg in e.args:
                result = [self.merge(r, t) for r in result for t in self.terms(arg)]
            return result
        if isinstance(e, ESum):
            return [self.sum_over(t, e) for t in self.terms(e.body)]
        if isinstance(e, sp.Pow) and _structural(e.base) and e.exp.is_Integer and e.exp > 0:
            return self.terms(sp.Mul(*[e.base] * int(e.exp), evaluate=False))
        return [Term(sp.S.One, (), (e,))]

    def sum_over(self, term: Term, e: ESum) -> Term:
        """Sum a term over e's indices; an index the term no longer uses counts its extent.

        An inner sum over the same name (`y[nu] + sum[nu](z[nu])`) binds its own index: it is
        renamed first, so the outer sum cannot capture it.
        """
        inner = set(term.summed) & set(e.indices)
        term = _rename(term, {s: self.names.fresh(s.name) for s in inner})
        used = term.indices()
        summed, factors, extents = list(term.summed), list(term.factors), list(term.extents)
        for i, extent in zip(e.indices, e.extents):
            if i in used:
                summed.append(i)
                extents.append(extent)
            else:
                factors.append(extent)
        return Term(term.coeff, tuple(summed), tuple(factors), tuple(extents))


def normalize(expr: sp.Expr, names: Names) -> list[Term]:
    """Flatten nested sums and products into terms; elementwise sums stay single factors."""
    terms = _Normalizer(names).terms(expr)
    out = []
    for t in terms:
        coeff, factors = t.coeff, []
        for f in t.factors:
            c, rest = f.as_coeff_Mul() if isinstance(f, sp.Mul) else (sp.S.One, f)
            coeff *= c
            factors.extend(sp.Mul.make_args(rest) if rest != 1 else ())
        out.append(Term(coeff, t.summed, tuple(factors), t.extents))
    return out


def contract(term: Term, names: Names) -> tuple[Term, list[str]]:
    """Contract every delta that touches a summed index; returns the renames made."""
    renames = []
    while True:
        for delta in (f for f in term.factors if isinstance(f, sp.KroneckerDelta)):
            a, b = delta.args
            summed = set(term.summed)
            if a in summed and (b not in summed or names.age(a) >= names.age(b)):
                old, new = a, b
            elif b in summed:
                old, new = b, a
            else:
                continue
            factors = list(term.factors)
            factors.remove(delta)
            kept = [k for k, s in enumerate(term.summed) if s != old]
            term = Term(term.coeff, tuple(term.summed[k] for k in kept),
                        tuple(f.xreplace({old: new}) for f in factors), tuple(term.extents[k] for k in kept))
            renames.append((old.name, str(new)))
            break
        else:
            break
    if any(f == 0 for f in term.factors):
        return Term(sp.S.Zero, (), ()), renames
    return _count_orphans(replace(term, factors=tuple(f for f in term.factors if f != 1))), renames


def _count_orphans(term: Term) -> Term:
    """A summed index that no factor uses any more sums a constant: it contributes its extent."""
    used = set(free_indices(sp.Mul(*term.factors, evaluate=False)))
    keep = [k for k, s in enumerate(term.summed) if s in used]
    orphans = [term.extents[k] for k, s in enumerate(term.summed) if s not in used]
    return Term(term.coeff, tuple(term.summed[k] for k in keep), term.factors + tuple(orphans),
                tuple(term.extents[k] for k in keep))


@functools.lru_cache(maxsize=65536)
def _groups(term: Term) -> dict[frozenset, sp.Expr]:
    """The term's factors multiplied together per set of indices they use (shared: do not change it)."""
    groups: dict[frozenset, list] = {}
    for f in term.factors:
        groups.setdefault(frozenset(free_indices(f)), []).append(f)
    return {key: sp.Mul(*factors) for key, factors in groups.items()}  # one Mul each: sympy sorts its factors once


@functools.lru_cache(maxsize=65536)  # tidy asks for each (term, skip) once per other term
def _canonical(term: Term, skip: frozenset | None = None) -> tuple:
    """A key equal for terms that differ only in the names of their summed indices.

    With `skip`, the factors over exactly that index set are left out of the key.
    """
    groups = _groups(term)
    factors = [g for k, g in groups.items() if k != skip]
    dummy = sp.Symbol("_", integer=True)
    masked = tuple((s, dummy) for s in term.summed)
    ordered = sorted(factors, key=lambda f: _srepr(f, masked))
    order = {}
    for f in ordered:
        for s in sorted(free_indices(f), key=lambda s: s.name):
            if s in term.summed and s not in order:
                order[s] = sp.Symbol(f"_s{len(order)}", integer=True)
    skipped = None if skip is None else frozenset(order.get(s, s) for s in skip)
    return tuple(sorted(_srepr(f, tuple(order.items())) for f in factors)), len(term.summed), skipped, order


@functools.lru_cache(maxsize=65536)  # each key of a term prints the same factors again
def _srepr(f: sp.Expr, renames: tuple) -> str:
    """sympy's exact text of f with its summed indices renamed."""
    return sp.srepr(f.xreplace(dict(renames)))


MAX_EXPANDED_TERMS = 64  # expanding (1 - t1^2)(1 - t2^2)... doubles the terms with each factor


def _expansion_size(e: sp.Expr) -> int:
    """How many terms expanding `e` would make, at most (without expanding it)."""
    if isinstance(e, sp.Add):
        return sum(_expansion_size(a) for a in e.args)
    if isinstance(e, sp.Mul):
        return math.prod(_expansion_size(a) for a in e.args)
    if isinstance(e, sp.Pow) and e.exp.is_Integer and e.exp > 0:
        return _expansion_size(e.base) ** int(e.exp)
    return 1


def expand(e: sp.Expr) -> sp.Expr:
    """Multiply out products of sums, unless that would make more than MAX_EXPANDED_TERMS terms.

    Denominators and function arguments are left as written: sympy would turn 1/(x - 2)^2
    into 1/(x^2 - 4x + 4), which loses digits to cancellation near x = 2.
    """
    if _expansion_size(e) > MAX_EXPANDED_TERMS:
        return e
    kept = {a: sp.Dummy() for a in sp.preorder_traversal(e)
            if (isinstance(a, sp.Pow) and a.exp.is_negative and a.base.is_Add)
            or (isinstance(a, sp.Function) and any(arg.has(sp.Add) for arg in a.args))}
    if not kept:
        return sp.expand(e)
    return sp.expand(e.xreplace(kept)).xreplace({d: a for a, d in kept.items()})


RESCALE = 10**6  # how far past the written numbers' range a rewrite may take its numbers


def _magnitudes(e: sp.Expr) -> tuple[sp.Number, sp.Number]:
    """The smallest and largest magnitude of the nonzero numbers written in `e` (1 among them)."""
    sizes = [abs(n) for n in e.atoms(sp.Number) if n != 0 and n.is_finite] + [sp.S.One]
    return min(sizes), max(sizes)


def _same_scale(candidate: sp.Expr, written: sp.Expr) -> bool:
    """Whether `candidate` writes only numbers within RESCALE of the range that `written` writes.

    factor_terms takes 1e-300 out of 1e-300 - s as 10^300 (1 - 10^300 s)/10^300: exact, but its
    square is 10^600, beyond any float, and a Hessian of log(1e-300 - sigmoid(z)) came out nan.
    """
    lo, hi = _magnitudes(written)
    new_lo, new_hi = _magnitudes(candidate)
    return new_lo * RESCALE >= lo and new_hi <= hi * RESCALE


@functools.lru_cache(maxsize=1 << 14)  # the same factor (1 - tanh(A)^2) recurs in many terms
def _simplest(f: sp.Expr) -> sp.Expr:
    """f, expanded or with common factors pulled out, whichever has the fewest operations.

    A rewrite that would write numbers far outside the range of f's own is not taken.
    """
    if not isinstance(f, sp.Add):
        return f
    candidates = [f] + [g for g in (expand(f), sp.factor_terms(f)) if _same_scale(g, f)]
    return min(candidates, key=sp.count_ops)


def _split(term: Term, coeff: sp.Expr, product: sp.Expr) -> Term:
    c, rest = product.as_coeff_Mul()
    factors = []
    for f in sp.Mul.make_args(rest):
        f = _simplest(f)
        fc, frest = f.as_coeff_Mul()
        c *= fc
        factors.extend(sp.Mul.make_args(frest) if frest != 1 else ())
    return replace(term, coeff=coeff * c, factors=tuple(factors))


def _bound_outside(term: Term, order: dict) -> bool:
    """Every index the term sums is also used outside the factors left out of `order` (its range is shared).

    sum[s1](X2[s1]^2) - 2 sum[s2](X3[s2]^2) are two sums over different ranges: never one.
    """
    return all(s in order for s in term.summed)


def _skips(term: Term) -> list[frozenset]:
    """The index sets whose factors may differ between combined terms, in a fixed order, whatever the hash seed."""
    return sorted(set(_groups(term)) | {frozenset()}, key=lambda k: sorted(s.name for s in k))


def _keys(term: Term) -> set[tuple]:
    """Every key `_combine` compares: two terms that share none never combine."""
    return {_canonical(term, skip)[:3] for skip in _skips(term)}


def _combine(a: Term, b: Term) -> Term | None:
    """A + b as one term when they differ only in the factors over one index set."""
    for skip in _skips(a):
        ka = _canonical(a, skip)
        for skip_b in _skips(b):
            kb = _canonical(b, skip_b)
            if ka[:3] != kb[:3] or not (_bound_outside(a, ka[3]) and _bound_outside(b, kb[3])):
                continue
            rename = {v: k for k, v in ka[3].items()}
            to_a = {s: rename[v] for s, v in kb[3].items()}
            ga, gb = _groups(a).get(skip, sp.S.One), _groups(b).get(skip_b, sp.S.One).xreplace(to_a)
            mixed = _simplest(expand(a.coeff * ga + b.coeff * gb))
            rest = sp.Mul(*[g for k, g in _groups(a).items() if k != skip])
            return _split(a, sp.S.One, mixed * rest)
    return None


def tidy(terms: list[Term]) -> list[Term]:
    """Simplify elementwise sums and add up terms that differ in one elementwise factor."""
    out: list[Term] = []
    where: dict[tuple, list[int]] = {}  # key -> the places in `out` whose term has (or had) it

    def place(k: int, later: bool) -> None:
        if later:  # keys are printed only for terms a later one may combine with
            for key in _keys(out[k]):
                where.setdefault(key, []).append(k)
    for n, t in enumerate(terms):
        later = n < len(terms) - 1
        t = _count_orphans(_split(t, t.coeff, sp.Mul(*t.factors)))  # a cancelled factor can orphan an index
        candidates = {k for key in _keys(t) for k in where.get(key, ())} if where else ()
        for k in sorted(candidates):  # the first that combines, as before
            merged = _combine(out[k], t)
            if merged is not None:
                out[k] = _count_orphans(merged)
                place(k, later)
                break
        else:
            out.append(t)
            place(len(out) - 1, later)
    return [t for t in out if t.coeff != 0 and all(f != 0 for f in t.factors)]


@functools.lru_cache(maxsize=1 << 14)
def _entries(expr: sp.Expr) -> list[sp.Indexed]:
    """The entries in `expr`, in sympy's order (shared: do not change the list)."""
    return sorted(expr.atoms(sp.Indexed), key=sp.default_sort_key)


def _renamed(definition, entry: sp.Indexed) -> sp.Expr | None:
    """The definition's right-hand side at the indices of `entry` (None if a fixed index differs)."""
    mapping = {}
    for own, at in zip(definition.indices, entry.indices):
        if own.is_Symbol:
            mapping[own] = at
        elif own != at:
            return None
    return definition.expr.xreplace(mapping)


def _unfold(product: sp.Expr, definitions: dict) -> sp.Expr:
    """Replace an elementwise intermediate by its definition where that makes the product shorter."""
    for entry in _entries(product):
        d = definitions.get(entry.base.label.name)
        rhs = d and _renamed(d, entry)
        if rhs is not None:
            candidate = product.xreplace({entry: rhs})
            if sp.count_ops(candidate) < sp.count_ops(product):
                return _unfold(candidate, definitions)
    return product


def _fold(product: sp.Expr, definitions: dict) -> sp.Expr:
    """Write a definition's right-hand side back as the intermediate it names (tanh(A) -> H)."""
    changed = True
    while changed:
        changed = False
        for d in definitions.values():
            if not tensor_set(d.expr) <= tensor_set(product):  # subs never matches a pattern naming a tensor not there
                continue
            for leaf in _entries(d.expr):
                matches = [e for e in _entries(product) if e.base == leaf.base and len(e.indices) == len(leaf.indices)]
                for entry in matches:
                    mapping = {own: at for own, at in zip(leaf.indices, entry.indices) if own.is_Symbol}
                    if not all(i in mapping for i in d.indices if i.is_Symbol):
                        continue
                    pattern = d.expr.xreplace(mapping)  # L1[n,b,j] = Z[b,n,j]/Z[n,n,j] at n = b is the number 1:
                    if not pattern.has(sp.Indexed):  # subs would write L1 for every 1, an axis number too
                        continue
                    candidate = product.subs(pattern, d.lhs.xreplace(mapping))
                    if candidate != product and sp.count_ops(candidate) < sp.count_ops(product):
                        product, changed = candidate, True
    return product


def simplify_with(term: Term, definitions: dict) -> Term:
    """Use the program's elementwise definitions to shorten a term: (1/P) exp(Z)/A -> 1, tanh(A) -> H."""
    if not definitions:
        return term
    product = sp.Mul(*term.factors)
    try:
        simpler = _fold(_unfold(product, definitions), definitions)
    except ValueError:  # a rewrite sympy cannot make (an unevaluated derivative in the way): keep the term
        return term
    if simpler == product:
        return term
    c, rest = simpler.as_coeff_Mul()
    return replace(term, coeff=term.coeff * c, factors=tuple(sp.Mul.make_args(rest)) if rest != 1 else ())


def contract_all(expr: sp.Expr, free: tuple, names: Names,
                 definitions: dict | None = None) -> tuple[IndexForm, list[Step], sp.Expr]:
    """Normalize, contract and tidy; returns the index form and the steps taken.

    `definitions` are the program's elementwise intermediates, used to shorten terms.
    """
    raw = normalize(expr, names)
    product = sp.Add(*[t.expr() for t in raw])
    contracted, renames = [], []
    for t in raw:
        t, r = contract(t, names)
        renames.extend(_substitutions(r))
        if t.coeff != 0:
            contracted.append(_count_orphans(simplify_with(t, definitions or {})))
    form = IndexForm(tuple(tidy(contracted)), tuple(free))
    in_chain_order = sorted(dict.fromkeys(renames), key=lambda rename: names.order.get(rename[0], 0))
    steps = [Step("Contract the deltas", sp.Symbol("_"), form.expr(), tuple(in_chain_order))]
    return form, steps, product


def _substitutions(renames: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """One substitution per summed index, what it finally became (alpha->i, r->i, l->i).

    `renames` were made one delta at a time: alpha->r, r->l, l->i.
    """
    final: dict[str, str] = {}
    for old, new in renames:
        for k, v in final.items():
            if v == old:
                final[k] = new
        final[old] = new
    return list(final.items())


