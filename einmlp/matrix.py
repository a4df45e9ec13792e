"""Recover matrix form (`@`, `.T`, `*`, `diag`, broadcasting) from a contracted index form.

Each factor becomes a matrix with a row and a column label (an index, or ONE for a size-1
axis: vectors are columns). Rules, tried in this order until one matrix is left:

    Hadamard   P(a,b) * Q(a,b)                      same labels: elementwise product
    outer      P(a,1) @ Q(b,1).T = R(a,b)           when some other factor has labels (a,b)
    diag       P(a,x) @ diag(v(x)) @ Q(x,b)         x summed, shared by exactly three factors
    matmul     P(a,x) @ Q(x,b)                      x summed, shared by exactly two factors
    sum        P(a,x).sum(axis=1)                   x summed, used by one factor only

When no rule applies (order-3 tensors, a diagonal, a trace of a product), there is no
matrix form and the result is written in einsum notation instead: never a wrong formula.
Compound pieces two levels deep are named D, F, G, ... as the article names D and F.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import sympy as sp
from opt_einsum import get_symbol

from .grad import Step
from .render import index_str
from .symbolic import Extent, free_indices

ONE = sp.Symbol("1", integer=True)  # the label of a size-1 axis
PIECE_NAMES = "DFGHJKLMNPQRSTUVZ"


class Leaf(sp.Expr):
    """A whole tensor inside an elementwise factor, possibly transposed or broadcast."""

    is_commutative = True

    def __new__(cls, name, transposed: bool, column: bool = False):
        label = name if isinstance(name, sp.Symbol) else sp.Symbol(name)  # sympy rebuilds from args
        return sp.Expr.__new__(cls, label, sp.true if transposed else sp.false, sp.true if column else sp.false)

    name = property(lambda self: self.args[0].name)
    transposed = property(lambda self: bool(self.args[1]))
    column = property(lambda self: bool(self.args[2]))

    def _sympystr(self, printer):
        return self.name + (".T" if self.transposed else "") + ("[:, None]" if self.column else "")


@dataclass(eq=False)
class Node:
    """A matrix expression: kind is leaf, elem, matmul, hadamard, diag or sum."""

    kind: str
    rows: sp.Symbol
    cols: sp.Symbol
    parts: list = field(default_factory=list)
    expr: sp.Expr | None = None    # for elem: the factor with its tensors as Leafs
    name: str | None = None        # a piece's name, once named
    axis: int = 0
    flat: bool = False             # a 1-D array in numpy: an outer product needs outer()

    def transpose(self) -> "Node":
        if self.kind == "sum":  # a reduction is a vector: numpy does not tell rows from columns
            return Node(self.kind, self.cols, self.rows, self.parts, None, self.name, self.axis)
        parts = [p.transpose() for p in reversed(self.parts)] if self.kind == "matmul" else \
            [p.transpose() for p in self.parts]
        expr = None if self.expr is None else self.expr.replace(
            lambda e: isinstance(e, Leaf), lambda e: Leaf(e.name, not e.transposed, e.column))
        return Node(self.kind, self.cols, self.rows, parts, expr, self.name, 1 - self.axis, self.flat)

    def labels(self) -> set:
        return {self.rows, self.cols} - {ONE}


def _wrap(node: Node, text: str, named: bool) -> str:
    atomic = node.kind in ("leaf", "diag") or (node.name and named) or \
        (node.kind == "elem" and isinstance(node.expr, (sp.Function, Leaf, sp.Symbol)))
    return text if atomic else f"({text})"


def render(node: Node, latex=None, named: bool = False) -> str:
    """Text of a matrix expression (or LaTeX, given a latex printer for elementwise factors).

    With `named`, pieces that have a name (D, F, ...) are written by it.
    """
    if node.name and named:
        if latex:
            from .latex import display
            return display(node.name)
        return node.name
    if node.kind in ("leaf", "elem"):
        return latex(node.expr) if latex else index_str(node.expr)
    sub = [_wrap(p, render(p, latex, named), named) for p in node.parts]
    if node.kind == "matmul":
        left, right = node.parts[0], node.parts[-1]
        if not latex and len(sub) == 2 and left.cols == ONE and right.rows == ONE and (left.flat or right.flat):
            return f"outer({render(left, None, named)}, {render(right, None, named)})".replace(".T,", ",") \
                .replace(".T)", ")")
        return (r" \cdot " if latex else " @ ").join(sub)
    if node.kind == "hadamard":
        return (r" \odot " if latex else " * ").join(sub)
    if node.kind == "diag":
        return (r"\operatorname{diag}(" if latex else "diag(") + render(node.parts[0], latex, named) + ")"
    return (rf"\textstyle\sum_{{{'rows' if node.axis == 0 else 'cols'}}} " + sub[0]) if latex \
        else f"{sub[0]}.sum(axis={node.axis})"


def _leafify(factor: sp.Expr, rows, cols) -> sp.Expr | None:
    """The factor with each tensor entry replaced by a Leaf oriented to (rows, cols)."""
    def leaf(entry: sp.Indexed):
        idx = [i for i in entry.indices if not (i.is_Integer and i == 0)]
        if any(i.is_Integer for i in idx) or len(set(idx)) != len(idx):
            return None
        name = entry.base.label.name
        if len(idx) == 2:
            return Leaf(name, (idx[0], idx[1]) == (cols, rows)) if set(idx) == {rows, cols} else None
        if len(idx) == 1:
            if len(entry.indices) == 2:  # a matrix with a size-1 axis: (a,1) or (1,a)
                column = entry.indices[1] == 0
                want_column = idx[0] == rows
                return Leaf(name, column != want_column)
            return Leaf(name, False, column=idx[0] == rows and cols != ONE)
        return Leaf(name, False)
    mapping = {}
    for entry in factor.atoms(sp.Indexed):
        replacement = leaf(entry)
        if replacement is None:
            return None
        mapping[entry] = replacement
    with sp.evaluate(False):  # a rename only: re-evaluating tanh(tanh(...(Leaf))) asks sympy's assumptions
        return factor.xreplace(mapping)  # again at every level, exponentially


def _node(factor: sp.Expr) -> Node | None:
    if isinstance(factor, sp.KroneckerDelta):
        a, b = factor.args
        if a.is_Symbol and b.is_Symbol:
            return Node("leaf", a, b, expr=sp.Symbol("I"))
        return None
    labels = list(free_indices(factor))
    if len(labels) > 2:
        return None
    rows, cols = (labels + [ONE, ONE])[:2]
    entries = list(factor.atoms(sp.Indexed))
    if len(labels) == 1 and entries and all(len(e.indices) == 2 and e.indices[0] == 0 for e in entries):
        rows, cols = ONE, labels[0]  # a row like W2.T[0,n]
    expr = _leafify(factor, rows, cols)
    if expr is None:
        return None
    kind = "leaf" if isinstance(expr, Leaf) else "elem"
    flat = len(labels) == 1 and all(len(e.indices) == 1 for e in entries)
    return Node(kind, rows, cols, expr=expr, flat=flat)


def _chain(left: Node, right: Node) -> Node:
    """Left @ right, flattening matrix-product chains (matmul is associative)."""
    parts = (left.parts if left.kind == "matmul" and not left.name else [left]) + \
        (right.parts if right.kind == "matmul" and not right.name else [right])
    return Node("matmul", left.rows, right.cols, parts)


class _Builder:
    def __init__(self, nodes: list[Node], summed: set, free: list):
        self.nodes, self.summed, self.free = nodes, set(summed), free

    def count(self, label) -> list[Node]:
        return [n for n in self.nodes if label in (n.rows, n.cols)]

    def replace(self, old: list[Node], new: Node) -> bool:
        self.nodes = [n for n in self.nodes if all(n is not o for o in old)] + [new]
        return True

    def oriented(self, node: Node, rows) -> Node:
        return node if node.rows == rows else node.transpose()

    def hadamard(self) -> bool:
        for k, p in enumerate(self.nodes):
            for q in self.nodes[k + 1:]:
                if {p.rows, p.cols} == {q.rows, q.cols} and (p.rows, p.cols) != (ONE, ONE):
                    turned = self.oriented(q, p.rows) if p.rows != p.cols else q
                    parts = (p.parts if p.kind == "hadamard" else [p]) + [turned]
                    parts.sort(key=lambda n: n.kind not in ("matmul", "hadamard", "sum"))
                    return self.replace([p, q], Node("hadamard", p.rows, p.cols, parts, flat=p.flat and q.flat))
        return False

    def outer(self, final: bool) -> bool:
        vectors = [n for n in self.nodes if ONE in (n.rows, n.cols) and len(n.labels()) == 1]
        for k, p in enumerate(vectors):
            for q in vectors[k + 1:]:
                (a,), (b,) = p.labels(), q.labels()
                if a == b:
                    continue
                target = next((n for n in self.nodes if {n.rows, n.cols} == {a, b}), None)
                if target is None and not (final and {a, b} == set(self.free)):
                    continue
                if target is not None and target.rows == b or target is None and self.free[0] == b:
                    p, q, a, b = q, p, b, a
                left, right = self.oriented(p, a), self.oriented(q, ONE)
                return self.replace([p, q], _chain(left, right))
        return False

    def matmul(self) -> bool:
        def useful(x):  # a product whose labels match another factor's comes first
            users = self.count(x)
            rest = {label for n in users for label in (n.rows, n.cols)} - {x}
            return not any({n.rows, n.cols} == rest for n in self.nodes if all(n is not u for u in users))
        def leaves(x):  # prefer error @ W.T, the way backpropagation reads
            return -sum(n.kind == "leaf" for n in self.count(x))
        for x in sorted(self.summed, key=lambda x: (useful(x), leaves(x), x.name)):
            users = self.count(x)
            if len(users) == 2 and users[0] is not users[1]:
                p, q = users
                left = p if p.cols == x else p.transpose()
                right = q if q.rows == x else q.transpose()
                self.summed.discard(x)
                return self.replace([p, q], _chain(left, right))
        return False

    def diag(self) -> bool:
        for x in sorted(self.summed, key=lambda s: s.name):
            users = self.count(x)
            vectors = [n for n in users if n.labels() == {x}]
            if len(users) == 3 and len(vectors) == 1:
                v = vectors[0]
                p, q = [n for n in users if n is not v]
                twin = sp.Symbol(x.name + "'", integer=True)
                d = Node("diag", x, twin, [self.oriented(v, x)])
                q2 = self.oriented(q, x) if q.rows == x else q.transpose()
                q2 = Node(q2.kind, twin, q2.cols, q2.parts, q2.expr, q2.name, q2.axis)
                self.summed.add(twin)
                self.nodes = [n for n in self.nodes if n is not v and n is not q] + [d, q2]
                return True
        return False

    def reduce(self) -> bool:
        for x in sorted(self.summed, key=lambda s: s.name):
            users = self.count(x)
            if len(users) == 1 and (ONE not in (users[0].rows, users[0].cols) or users[0].labels() == {x}):
                p = users[0]
                axis = 0 if p.rows == x else 1
                rows, cols = (ONE, p.cols) if axis == 0 else (p.rows, ONE)
                self.summed.discard(x)
                return self.replace([p], Node("sum", rows, cols, [p], axis=axis))
        return False

    def run(self) -> Node | None:
        while len(self.nodes) > 1 or self.summed:
            if not (self.hadamard() or self.outer(False) or self.diag() or self.matmul()
                    or self.reduce() or self.outer(True)):
                return None
        return self.nodes[0] if self.nodes else None


def _size1_axes(model, name: str) -> set[int]:
    """Axes of input `name` that the program only ever indexes with 0 (size-1 axes)."""
    axes = set(range(model.inputs.get(name, 0)))
    if not axes:  # an intermediate (or a scalar): its size-1 axes are written on its left-hand side
        return axes
    for d in model.definitions.values():
        for e in d.expr.atoms(sp.Indexed):
            if e.base.label.name == name:
                axes &= {a for a, i in enumerate(e.indices) if i == 0}
    return axes


@dataclass
class MatrixForm:
    text: str                  # e.g. -2 * X.T @ (((Ytilde * f2'(C)) @ W2.T) * f1'(A))
    exists: bool               # False: no matrix form, `text` is einsum notation
    trees: list                # per term: (coefficient, Node) when exists
    pieces: list[tuple[str, Node]]
    note: str = ""

    def named_text(self) -> str:
        """The matrix form using the named pieces, e.g. 2 * X.T @ (F * f1'(A))."""
        return _terms(self.trees, named=True) if self.exists else self.text

    def latex(self, named: bool = False) -> str:
        from .latex import to_latex
        if not self.exists:
            return to_latex(self.text)
        return _terms(self.trees, named, to_latex)

    def steps(self, lhs) -> list[Step]:
        from .latex import to_latex
        if not self.exists:
            return [Step("No matrix form (" + self.note + "); in einsum notation", lhs, self.text)]
        out = [Step("Order the factors as matrix products, with transposes", lhs, self.transposed_text(),
                    latex_expr=self.transposed_text(to_latex))]
        for name, node in self.pieces:
            piece = replace(node, name=None)  # the piece written out, the pieces inside it by name
            out.append(Step("Name the piece", name, render(piece, named=True),
                            latex_expr=render(piece, to_latex, named=True), subject=name))
        if self.pieces:
            out.append(Step("Matrix form with the named pieces", lhs, self.named_text(),
                            latex_expr=self.latex(named=True)))
        out.append(Step("Matrix form", lhs, self.text, latex_expr=self.latex()))
        return out

    def transposed_text(self, latex=None) -> str:
        """The index form with each factor written as the matrix it becomes, in product order."""
        terms = []
        for coeff, tree in self.trees:
            factors = [_entry_text(leaf, latex) for leaf in _leaves(tree)]
            c = (latex(coeff) + r"\," if coeff not in (1, -1) else "-" * (coeff == -1)) if latex \
                else _coeff_text(coeff).replace(" * ", " ")
            terms.append(c + (r"\, " if latex else " ").join(factors))
        return " + ".join(terms).replace("+ -", "- ")


def _label(symbol) -> str:
    return "0" if symbol == ONE else str(symbol)


def _entry_text(leaf: Node, latex=None) -> str:
    text = render(leaf, latex)
    if latex:
        from .latex import display_index
        rows, cols = (display_index(_label(i)) for i in (leaf.rows, leaf.cols))
        return rf"\left({text}\right)_{{{rows},{cols}}}" if leaf.kind != "leaf" or "top" in text \
            else f"{text}_{{{rows},{cols}}}"
    text = f"({text})" if text.endswith(".T") else text
    return f"{text}[{_label(leaf.rows)},{_label(leaf.cols)}]"


def _leaves(node: Node) -> list[Node]:
    if node.kind in ("leaf", "elem", "diag"):
        return [node]
    return [leaf for p in node.parts for leaf in _leaves(p)]


def _coeff_text(coeff) -> str:
    return "" if coeff == 1 else ("-" if coeff == -1 else f"{index_str(coeff)} * ")


def _terms(trees, named: bool, latex=None) -> str:
    """The whole matrix form: each term's coefficient and tree, joined by + and -."""
    out = []
    for coeff, tree in trees:
        text = render(tree, latex, named)
        a_sum = tree.kind == "elem" and isinstance(tree.expr, sp.Add) and not (tree.name and named)
        if latex:
            c = "" if coeff == 1 else "-" if coeff == -1 else latex(coeff) + r"\,"
            text = rf"\left({text}\right)" if c and a_sum else text
        else:
            c = _coeff_text(coeff)
            text = f"({text})" if c == "-" and tree.kind == "hadamard" or c and a_sum else text
        out.append(c + text)
    return " + ".join(out).replace("+ -", "- ")


def _name_pieces(trees, taken: set) -> list:
    names = (c for c in PIECE_NAMES if c not in taken)
    pieces = []

    def walk(n: Node, depth: int):
        for p in n.parts:
            walk(p, depth + 1)
        if depth >= 2 and n.kind in ("matmul", "hadamard"):
            n.name = next(names, None)
            if n.name:
                pieces.append((n.name, n))
    for _, t in trees:
        walk(t, 0)
    return pieces


def _einsum_text(derivation) -> str:
    terms = []
    order = [i for i in derivation.free if i.is_Symbol]
    for t in derivation.form.terms:
        letters: dict = {}
        subs, args, scalars = [], [], []
        for f in t.factors:
            idx = [i for i in free_indices(f)]
            if not idx:
                scalars.append(index_str(f))
                continue
            for i in idx:
                letters.setdefault(i, get_symbol(len(letters)))
            subs.append("".join(letters[i] for i in idx))
            args.append(index_str(f) if isinstance(f, sp.Indexed) is False else f.base.label.name)
        out = "".join(letters[i] for i in order if i in letters)
        c = _coeff_text(t.coeff * sp.Mul(*[sp.Symbol(s) for s in scalars]))
        terms.append(c + f"einsum('{','.join(subs)}->{out}', {', '.join(args)})" if subs else c + "1")
    return " + ".join(terms).replace("+ -", "- ") or "0"


def matrix_form(derivation) -> MatrixForm:
    """The matrix form of a derivation, or its einsum notation when none exists."""
    model = derivation.model
    order = [i for i in derivation.free if i.is_Symbol]
    size1 = {}
    wrt_free = derivation.free[len(derivation.free) - model.rank(derivation.wrt):]
    for axis in _size1_axes(model, derivation.wrt):
        size1[wrt_free[axis]] = True
    free = [i for i in order if i not in size1]
    trees, reason = [], ""
    if len(free) > 2:
        reason = f"the result has {len(free)} axes"
    for t in derivation.form.terms if not reason else ():
        coeff, nodes = t.coeff, []
        for f in t.factors:
            if isinstance(f, sp.KroneckerDelta) and any(a in size1 for a in f.args) and any(a == 0 for a in f.args):
                continue
            if not free_indices(f) or isinstance(f, Extent):
                coeff *= f
                continue
            node = _node(f)
            if node is None:
                reason = f"the factor {index_str(f)} is not a matrix"
                break
            nodes.append(node)
        if reason:
            break
        tree = _Builder(nodes, set(t.summed), free).run() if nodes else Node("leaf", ONE, ONE, expr=sp.Integer(1))
        if tree is None:
            reason = "the indices do not pair up into matrix products"
            break
        if len(free) == 2 and tree.rows != free[0] or len(free) == 1 and tree.rows == ONE != tree.cols:
            tree = tree.transpose()
        trees.append((coeff, tree))
    if reason:
        return MatrixForm(_einsum_text(derivation), False, [], [], reason)
    text = _terms(trees, named=False) or "0"
    taken = set(model.inputs) | set(model.definitions)
    pieces = _name_pieces(trees, taken)
    return MatrixForm(text, True, trees, pieces)
