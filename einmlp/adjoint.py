"""Reverse mode in index notation: one adjoint per statement, derived once and shared.

For a target `of` and the statements on the way to the inputs asked for, walking the
program backwards::

    Tbar[p.., t..] = d of[p..] / d T[t..]
                   = sum over each statement U that uses T:  sum[u]( Ubar[p.., u..] dU[u..]/dT[t..] )

(`p` are the free indices of `of`; none for a scalar loss, whose own adjoint is 1.) Each
local derivative dU/dT is the article's rule, Kronecker deltas from sympy, and is
contracted at once, so the adjoints are the textbook backprop equations
(`Abar[i,k] = Bbar[i,k] f1'(A[i,k])`) and their cost is linear in the program. Every
adjoint becomes an ordinary definition of an augmented model, so lowering computes each
one once, and every gradient reads from them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import sympy as sp

from .deltas import IndexForm, Term, contract, contract_all, normalize
from .grad import WRT_NAMES, Names, Step, entry
from .render import index_str
from .symbolic import (ESum, Definition, Extent, Model, index, index_names, tensor_names, tensor_set,
                       transitive_uses)


@dataclass(frozen=True, slots=True)
class Adjoint:
    tensor: str                 # the statement (or input) it is the adjoint of: C
    name: str                   # the tensor that holds it: Cbar (for an input: the gradient)
    form: IndexForm             # contracted, over `of`'s free indices and then the tensor's own
    users: tuple[str, ...]      # statements whose adjoints it reads


@dataclass(frozen=True, slots=True)
class Backprop:
    model: Model                   # the program's model plus one definition per adjoint, in order
    of: str
    adjoints: dict[str, Adjoint]   # tensor -> adjoint: statements, then the inputs asked for
    names: Names
    lowering: dict[str, IndexForm]  # tensor -> the form that runs (single-use products written out)
    derived: Model                  # the program's model plus each adjoint as derived: what a Hessian differentiates

    def steps(self, wrt: str | None = None) -> list[Step]:
        """The adjoint of each statement (on the way to `wrt`), in index and matrix form, in computing order."""
        from .matrix import matrix_form
        steps = []
        for a in self.adjoints.values():
            if a.tensor in self.model.inputs or (wrt is not None and not self.model.depends(a.tensor, wrt)):
                continue
            lhs = self.model.definitions[a.name].lhs
            steps.append(Step("Adjoint of", lhs, a.form.expr() if a.form.terms else sp.S.Zero, subject=a.tensor))
            matrix = matrix_form(_View(self.model, a.tensor, a.form))
            if matrix.exists and a.form.terms:
                steps.append(Step("In matrix form", a.name, matrix.text, latex_expr=matrix.latex()))
        return steps


@dataclass(frozen=True, slots=True)
class _View:
    """What the matrix stage reads of a derivative, for one adjoint."""

    model: Model
    wrt: str
    form: IndexForm

    @property
    def free(self) -> tuple:
        return self.form.free


def local_derivative(e: sp.Expr, target: sp.Expr, name: str) -> sp.Expr:
    """The derivative of e by target, where target is `name[t..]` (or the scalar `name`), node by node.

    The same result as sympy's `diff` (deltas for entries, the chain rule through functions),
    without sympy's general machinery, which dominates the cost of deriving a deep network.
    Anything outside the language's own nodes goes to sympy.
    """
    if not _mentions(e, name):
        return sp.S.Zero
    if isinstance(e, sp.Indexed):
        return sp.Mul(*[_delta(i, t) for i, t in zip(e.indices, target.indices)])
    if e.is_Symbol:
        return sp.S.One
    if isinstance(e, sp.Add):
        return sp.Add(*[local_derivative(a, target, name) for a in e.args])
    if isinstance(e, sp.Mul):
        args = e.args
        return sp.Add(*[sp.Mul(*args[:k], local_derivative(a, target, name), *args[k + 1:])
                        for k, a in enumerate(args) if _mentions(a, name)])
    if isinstance(e, sp.Pow) and not _mentions(e.exp, name):
        return e.exp * e.base ** (e.exp - 1) * local_derivative(e.base, target, name)
    if isinstance(e, ESum):
        return ESum(local_derivative(e.body, target, name), e.indices, e.extents)
    if isinstance(e, sp.Function) and len(e.args) == 1 and not isinstance(e, sp.Abs):
        outer = e.fdiff(1)
        if not outer.has(sp.Derivative, sp.Subs):  # else sympy knows better (or says it cannot)
            return outer * local_derivative(e.args[0], target, name)
    return e.diff(target)


def _delta(i: sp.Expr, t: sp.Expr) -> sp.Expr:
    """delta(i, t), decided here where it is certain (sympy would ask its assumptions each time)."""
    if i == t:
        return sp.S.One
    if i.is_Integer and t.is_Integer:
        return sp.S.Zero
    return sp.KroneckerDelta(i, t, evaluate=False)


def _mentions(e: sp.Expr, name: str) -> bool:
    return name in tensor_set(e)


def _terms_naming(d: Definition, name: str) -> Definition:
    """`d` with only the terms of its right-hand side that name `name`: the others differentiate to 0.

    A gradient read as one statement sums a term per layer; each layer's adjoint needs one of them.
    """
    if not isinstance(d.expr, sp.Add):
        return d
    return replace(d, expr=sp.Add(*[a for a in d.expr.args if _mentions(a, name)]))


def _direct(model: Model) -> dict[str, list[str]]:
    """Tensor -> the statements whose right-hand side names it."""
    users: dict[str, list[str]] = {}
    for name, refs in model.refs.items():
        for used in refs:
            users.setdefault(used, []).append(name)
    return users


def on_path(model: Model, of: str, wrts) -> list[str]:
    """The statements between `of` and any of `wrts`, in program order (`of` included)."""
    return [n for n in model.definitions if (n == of or model.depends(of, n))
            and any(model.depends(n, w) for w in wrts)]


def path_count(model: Model, of: str, wrt: str) -> int:
    """How many chains of statements lead from `of` down to `wrt` (2^L for L residual blocks)."""
    counts: dict[str, int] = {wrt: 1}
    for name, refs in model.refs.items():
        counts[name] = sum(counts.get(t, 0) for t in refs)
    return counts.get(of, 0)


def _name(tensor: str, taken: set[str]) -> str:
    """The adjoint's tensor: Cbar, or Cbar_ where the program already has a Cbar."""
    name = tensor + "bar"
    while name in taken:
        name += "_"
    taken.add(name)
    return name


class _Walk:
    def __init__(self, model: Model, of: str, names: Names):
        self.model, self.of, self.names = model, of, names
        self.of_def = model.definitions[of]
        self.pattern = self.of_def.indices  # p: of's free indices (Integer 0 for its size-1 axes)
        self.bars: dict[str, str] = {}       # statement -> its adjoint tensor
        self.program_indices = list(dict.fromkeys(  # the index names the program itself writes, in order
            s.name for d in model.definitions.values() for e in sp.preorder_traversal(d.expr)
            if isinstance(e, sp.Indexed) for s in e.indices if s.is_Symbol))
        self.definitions: dict[str, Definition] = {}

    def at(self, d: Definition, lhs: tuple) -> sp.Expr:
        """U's right-hand side with its left-hand indices renamed to `lhs`, the rest fresh."""
        rename = {own: new for own, new in zip(d.indices, lhs) if own.is_Symbol}
        for own in sorted(index_names(d.expr) - {s.name for s in rename}):
            rename[index(own)] = self.names.fresh(own)
        return d.expr.xreplace(rename)

    def contribution(self, user: str, target: sp.Expr) -> sp.Expr:
        """sum[u]( Ubar[p.., u..] dU[u..]/dT[t..] ) for one statement U that uses T."""
        name = target.base.label.name if isinstance(target, sp.Indexed) else target.name
        d = _terms_naming(self.model.definitions[user], name)
        if user == self.of:  # the seed: d of[p] / d of[p'] is a delta, so read of at p directly
            return local_derivative(self.at(d, self.pattern), target, name)
        links = tuple(self.names.link() if i.is_Symbol else i for i in d.indices)
        bar = entry(self.bars[user], tuple(self.pattern) + links)
        summed = [s for s in links if s.is_Symbol]
        extents = [Extent(s.name, user, axis) for axis, s in enumerate(links) if s.is_Symbol]
        return ESum(bar * local_derivative(self.at(d, links), target, name), summed, extents)

    def adjoint(self, tensor: str, users: list[str], own: tuple) -> IndexForm:
        target = entry(tensor, own)
        expr = sp.Add(*[self.contribution(u, target) for u in users])
        near = set(users) | {tensor}
        local = {n: d for n, d in self.model.definitions.items()
                 if n in near and d.indices and not d.expr.has(ESum)}
        form, _, _ = contract_all(expr, tuple(self.pattern) + own, self.names, local)
        return IndexForm(tuple(self.readable(t, form.free) for t in form.terms), form.free)

    def readable(self, term: Term, free: tuple) -> Term:
        """Call a summed index what the statement of the first tensor it runs over calls it: e -> i.

        Never a name free in the form, even where this term is broadcast along it.
        """
        used = {s.name for f in term.factors for s in f.free_symbols if s.is_integer} | {str(s) for s in term.summed}
        used |= {str(i) for i in free}
        rename = {}
        entries = sp.Mul(*term.factors).atoms(sp.Indexed) if term.summed else set()
        for s in term.summed:
            home = next((f for f in entries if s in f.indices
                         and f.base.label.name in self.definitions), None)
            own = self.definitions[home.base.label.name].indices[list(home.indices).index(s)] if home else None
            if own is None or not own.is_Symbol or own.name in used:  # else the program's own index names
                own = next((index(n) for n in self.program_indices if n not in used), None)
            if own is not None:
                rename[s] = own
                used.add(own.name)
        return Term(term.coeff, tuple(rename.get(s, s) for s in term.summed),
                    tuple(f.xreplace(rename) for f in term.factors), term.extents) if rename else term

    def define(self, tensor: str, name: str, form: IndexForm) -> None:
        of_extents = [Extent(i.name, self.of, a) if i.is_Symbol else None for a, i in enumerate(self.pattern)]
        own = form.free[len(self.pattern):]
        own_extents = [Extent(i.name, tensor, a) if i.is_Symbol else None for a, i in enumerate(own)]
        source = f"{index_str(entry(name, form.free))} = {index_str(form.expr()) if form.terms else '0'}"
        self.definitions[name] = Definition(name, tuple(form.free), form.expr(), source, True,
                                            tuple(of_extents + own_extents))


MAX_FUSED = 12  # factors of a fused product: a chain of L statements would write out L^2 factors in all


def _inlined(definitions: dict[str, Definition], adjoints: dict[str, Adjoint]) -> dict[str, sp.Expr]:
    """What runs: an adjoint that is one elementwise product, read once, is written into its reader.

    `Ytildebar = 2 Ytilde`, `Yhatbar = -Ytildebar`, `Cbar = Yhatbar f2'(C)` run as one fused
    product; the steps still show each of them. A product of more than MAX_FUSED factors is
    computed on its own. Returns adjoint (or gradient) name -> expression.
    """
    reads: dict[str, int] = {}  # every occurrence: an adjoint read twice in one form is written out twice
    for a in adjoints.values():
        for e in sp.preorder_traversal(a.form.expr()):
            if isinstance(e, sp.Indexed) and e.base.label.name in definitions:
                reads[e.base.label.name] = reads.get(e.base.label.name, 0) + 1
    inline = {a.name for a in adjoints.values() if reads.get(a.name) == 1
              and len(a.form.terms) == 1 and not a.form.terms[0].summed}
    computed: dict[str, sp.Expr] = {}

    def written_out(e: sp.Indexed) -> sp.Expr:
        d = definitions[e.base.label.name]
        return computed[d.name].xreplace({own: at for own, at in zip(d.indices, e.indices) if own.is_Symbol})
    def fused(e: sp.Expr) -> bool:
        name = e.base.label.name if isinstance(e, sp.Indexed) else None
        return name in inline and len(sp.Mul.make_args(computed[name])) <= MAX_FUSED
    for a in adjoints.values():  # in the order they are computed: readers after what they read
        computed[a.name] = a.form.expr().replace(fused, written_out)
    return computed


def _contracted(expr: sp.Expr, names: Names) -> sp.Expr:
    """Contract the deltas that an inlined adjoint brought against its reader's sums."""
    terms = [contract(t, names)[0] for t in normalize(expr, names)]
    return sp.Add(*[t.expr() for t in terms if t.coeff != 0])


def with_statement(model: Model, name: str, form: IndexForm, of: str, wrt: str) -> tuple[Model, str]:
    """`model` with `name[of.., wrt..] = form` as one more statement: a derivative to differentiate again."""
    taken = set(model.inputs) | set(model.definitions)
    while name in taken:
        name += "_"
    of_axes = len(form.free) - model.inputs[wrt]
    extents = tuple(None if not i.is_Symbol else Extent(i.name, of, a) if a < of_axes
                    else Extent(i.name, wrt, a - of_axes) for a, i in enumerate(form.free))
    expr = form.expr()
    source = f"{index_str(entry(name, form.free))} = {index_str(expr)}"
    d = Definition(name, tuple(form.free), expr, source, True, extents)
    refs = {**model.refs, name: tuple(tensor_names(expr))}
    definitions = {**model.definitions, name: d}
    return Model(definitions, model.inputs, model.targets, model.functions,
                 transitive_uses(refs, definitions), refs), name


def backprop(model: Model, of: str, wrts: tuple[str, ...]) -> Backprop:
    """The adjoint of every statement between `of` and `wrts`, and the gradient of each of `wrts`."""
    users = _direct(model)
    between = on_path(model, of, wrts)
    taken = set().union(*(index_names(d.expr) | {s.name for s in d.indices if s.is_Symbol}
                          for d in model.definitions.values()))
    names = Names(taken)
    walk = _Walk(model, of, names)
    tensors = set(model.inputs) | set(model.definitions)
    adjoints: dict[str, Adjoint] = {}
    for tensor in reversed(between):
        if tensor == of:
            continue
        readers = [u for u in users.get(tensor, []) if u in between]
        own = tuple(model.definitions[tensor].indices)
        own = tuple(names.fresh(i.name) if i.is_Symbol and i in walk.pattern else i for i in own)
        name = _name(tensor, tensors)
        form = walk.adjoint(tensor, readers, own)
        walk.bars[tensor] = name
        walk.define(tensor, name, form)
        adjoints[tensor] = Adjoint(tensor, name, form, tuple(readers))
    free_names = [n for n in WRT_NAMES if n not in names.taken]  # every gradient's own indices: m, n, ...
    wrt_indices = [names.fresh(free_names[k] if k < len(free_names) else "m")
                   for k in range(max((model.inputs[w] for w in wrts), default=0))]
    for wrt in wrts:
        readers = [u for u in users.get(wrt, []) if u in between]
        own = tuple(wrt_indices[:model.inputs[wrt]])
        form = walk.adjoint(wrt, readers, own) if readers else IndexForm((), tuple(walk.pattern) + own)
        adjoints[wrt] = Adjoint(wrt, "d" + of + "/d" + wrt, form, tuple(readers))
    computed = {name: _contracted(expr, names) for name, expr in _inlined(walk.definitions, adjoints).items()}
    augmented = _augment(model, {n: replace(d, expr=computed[n]) for n, d in walk.definitions.items()})
    lowering = {a.tensor: IndexForm(tuple(normalize(computed[a.name], names)), a.form.free)
                for a in adjoints.values()}
    return Backprop(augmented, of, adjoints, names, lowering, _augment(model, walk.definitions))


def _augment(model: Model, extra: dict[str, Definition]) -> Model:
    """`model` with more definitions after its own."""
    refs = {**model.refs, **{name: tuple(tensor_names(d.expr)) for name, d in extra.items()}}
    definitions = {**model.definitions, **extra}
    return Model(definitions, model.inputs, model.targets, model.functions, transitive_uses(refs, definitions), refs)
