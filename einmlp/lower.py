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
terms broadcast to the output's axes. The numpy source of elementwise expressions is
printing.py's, the matrix-product patterns are products.py's, and the order the
equations run in is schedule.py's.
"""

from __future__ import annotations

import keyword
from collections import Counter
from dataclasses import dataclass, field, replace

import sympy as sp
from opt_einsum import get_symbol

from .deltas import IndexForm, Term, normalize
from .errors import IndexNotationError
from .functions import UserFunction
from .grad import Names
from .printing import Printer, align, gate, inline_definitions, letters, never_negative, sigmoid_slopes
from .products import matmul, reduction
from .render import index_str
from .rows import Blocking, Separability
from .schedule import early, name_directly
from .shapes import fixed_axes
from .stable import softmax_shifts, term_power_logs
from .symbolic import Model, free_indices, index_names

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
    blocks: tuple[Blocking, ...] = ()  # axis classes over which the plan may run on blocks of rows (rows.py)

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


_SLOTS: list[sp.Symbol] = []
# The one size-1 axis of an output, where the left-hand side writes it as 0: named "0", so that
# comments still read C[i,0]. A fixed index is always 0 on an axis of length 1 (shapes checks it).
_UNIT = sp.Symbol("0", integer=True)


def _slot(position: int) -> sp.Symbol:
    """A placeholder for the length-1 axis at `position` of a left-hand side like `C[i,0]`."""
    while len(_SLOTS) <= position:
        _SLOTS.append(sp.Symbol(f"_slot{len(_SLOTS)}", integer=True))
    return _SLOTS[position]



def _full(axes, size_of, code: str) -> str:
    """`code` broadcast to a new array over `axes`."""
    return f"_full(({''.join(f'{size_of(i)}, ' for i in axes)}), {code})"


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
        self.forms: dict[str, tuple] = {}  # derivative variable -> (what it computes, its free indices' axes, pattern)

    @classmethod
    def returning(cls, model: Model, program: Model, of: str) -> Lowerer:
        """A Lowerer for `model` (the program, or its adjoints) whose plan returns or differentiates `of`.

        The program's softmax logits are read less their row maximum where that leaves `of`'s
        value and derivatives unchanged (stable.py).
        """
        return cls(model, softmax_shifts(program, values=(of,)))

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
        self.emit_form(form, variable(name), {i: d.extent(i) for i in d.indices if i.is_Symbol}, comment=d.source)

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
        """Emit a derivative `form` into variable `out`, kept for the plan's separability (rows.py)."""
        self.forms[out] = (form.expr(), {i: bindings[i] for i in form.free if i in bindings}, form.free)
        return self.emit_form(form, out, bindings, comment)

    def emit_form(self, form: IndexForm, out: str, bindings: dict, comment: str = "") -> str:
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
            code = _full(layout, size_of, code)
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
        printer = Printer(order, size_of, self.var_of)
        coeff_parts = []
        groups: list[tuple[set, list]] = []   # (indices, factors) to fuse elementwise
        plain: list[sp.Indexed] = []
        # f(t) = 2 t makes f' constant, q(x) = 0.5 makes exp(q(E[d,n])) - Y[0] read no E: a summed
        # index that no factor reads once written out is still summed, and counts its length
        written = [inline_definitions(f) for f in term.factors]
        if any(w == 0 for w in written):  # q(x) = 1.49 makes q' 0: the term is 0, even where the rest is nan
            return None, (), "0.0"
        read = {i for w in written for i in free_indices(w)}
        lost = {i for f in term.factors for i in free_indices(f)} - read - set(order)
        coeff_parts.extend(size_of(i) for i in sorted(lost, key=str))
        for f, w in zip(term.factors, written):
            indices = free_indices(f)
            if set(indices) != set(now := free_indices(w)):  # laid out over the axes it reads written out
                f, indices = w, now
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
            code = matmul((va, ia), (vb, ib), keep)
            if code:
                candidates.append((twin is None, k, m, code, keep))
        if not candidates:
            return None
        _, k, m, code, keep = min(candidates, key=lambda c: c[0])
        (va, ia), (vb, ib) = operands[k], operands[m]
        letter = {i: get_symbol(n) for n, i in enumerate(dict.fromkeys(ia + ib))}
        spec = f"np.einsum('{letters(ia, letter)},{letters(ib, letter)}->{letters(keep, letter)}', {va}, {vb})"
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
        nonnegative = all(never_negative(m.as_coeff_Mul()[1]) for m in written)
        if len(written) > 1 and (product := sp.Mul(*written)).count(sp.exp) < sum(w.count(sp.exp) for w in written):
            # q'(u) / q(u) with q(x) = exp(-x^2) is -2 u: not 0 / 0 where exp(-u^2) underflows
            written = [product]
        for member in self.once(sigmoid_slopes(written), local, size_of):
            c, rest = member.as_coeff_Mul()
            number *= c
            for f in sp.Mul.make_args(rest):
                if f != 1:
                    by_set.setdefault(frozenset(free_indices(f)), []).append(f)
        printer = Printer(local, size_of, self.var_of, self.size1_of)
        gates = [g for fs in by_set.values() for f in fs if (g := gate(f)) is not None]
        if gates and any(gate(f) is None for fs in by_set.values() for f in fs):
            # relu'(x) * g is where(x > 0, g, 0): 0 where relu is flat even if g is inf there
            # (sqrt(relu(x))' at x < 0), as torch and jax take relu's derivative; relu'(x)^2 too
            by_set = {k: rest for k, fs in by_set.items() if (rest := [f for f in fs if gate(f) is None])}
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
        read = set().union(*by_set, *(free_indices(g) for g in gates))
        if not read >= {i for i in local if i not in _SLOTS and i != _UNIT}:
            # the factors simplified to fewer axes (q''/q - (q'/q)^2 with q(x) = exp(-x^2) is the
            # number -2): laid out over all of them still, as the contraction reading it expects
            code = _full(local, size_of, code)
        var = self.emit(code, " * ".join(f"({index_str(m)})" if m.is_Add and len(members) > 1 else index_str(m)
                                         for m in members))
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
            var = self.emit(Printer(axes, size_of, self.var_of, self.size1_of).p(call), index_str(call))
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
        subscripts = ",".join(letters(ix, letter) for _, ix in operands) + "->" + letters(out_indices, letter)
        key = f"einsum('{subscripts}', {', '.join(v for v, _ in operands)})"
        if key in self.cache:
            return self.cache[key]
        var = self.temp()
        direct = reduction(operands[0], out_indices) if len(operands) == 1 else ""  # products: see contract
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
        equations = name_directly(self.equations, outputs)
        if len(outputs) > 1:
            equations = early(equations, set(outputs.values()))
        variables = {n: variable(n) for n in self.defined}
        blocks = () if self.abstract else Separability(self.model, self.forms, self.shifts).blocking(
            inputs, outputs, self.defined, variables)
        return EinsumPlan(inputs, equations, outputs, tuple(self.abstract), variables, blocks)

