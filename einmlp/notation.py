"""Other spellings of a statement, read into index notation: einsum specs and matrix notation.

Einsum specs are numpy's; matrix notation is read over declared shapes (`X is B x D`, then
`H = f(X W1 + B1)`).

Matrix notation is translated axis by axis: every axis of every operand is a node that a
matrix product or an elementwise operation joins to another (union-find); each joined
class becomes one index letter, named after its dimension (`D` gives `d`), a size-1 axis
broadcast over the batch becomes the fixed index 0, and a contracted class is summed
exactly over its own product. The result is ordinary syntax, so every later stage (and
`Program.text_form`) sees the bracket spelling.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .errors import IndexNotationError, ShapeError
from .syntax import BinOp, Call, Declaration, Expr, Group, Neg, Num, Ref, Span, Statement, SumOver, Transpose
from .textform import expr_text

_LETTERS = "ijklmnpqrstuvw"


class NotationError(Exception):
    """Raised here with a span; the parser turns it into a ParseError with a caret."""

    def __init__(self, message: str, span: Span | None, kind=None):
        super().__init__(message)
        self.span, self.kind = span, kind


# -- walking syntax ------------------------------------------------------------------------

def children(expr: Expr) -> tuple:
    """The sub-expressions a node holds, in order."""
    if isinstance(expr, BinOp):
        return expr.left, expr.right
    if isinstance(expr, Neg):
        return (expr.operand,)
    if isinstance(expr, Call):
        return (expr.arg,)
    if isinstance(expr, (SumOver, Group, Transpose)):
        return (expr.body,)
    return ()


def walk(expr: Expr):
    """Every node of `expr`, without recursion (a deeply nested expression cannot overflow the stack)."""
    stack = [expr]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(children(node))


def factors(expr: Expr) -> list[Expr]:
    """The factors of a product, however it is nested."""
    if isinstance(expr, BinOp) and expr.op in ("*", " ", "@"):
        return factors(expr.left) + factors(expr.right)
    return [expr]


def _indices(expr: Expr) -> set:
    return {i for node in walk(expr) if isinstance(node, Ref) for i in node.indices}


def crowded(expr: Expr, index: str) -> bool:
    """Does `index` occur in two factors of a product inside `expr`?

    Then an implicit sum over an enclosing product would be read as a sum inside that inner
    product instead.
    """
    for node in walk(expr):
        if isinstance(node, BinOp) and node.op in ("*", " "):
            if sum(index in _indices(f) for f in factors(node)) >= 2:
                return True
    return False


def product(factors: list[Expr], span: Span) -> Expr:
    """The factors multiplied left to right, as the parser nests a product."""
    result = factors[0]
    for factor in factors[1:]:
        result = BinOp("*", result, factor, span)
    return result


def implicit(factors: list[Expr], summed: list[str], span: Span) -> Expr:
    """A product summed over `summed`: by the Einstein rule where that reads the same.

    Else with an explicit sum[...]: an index crowded inside a call would be summed there.
    """
    explicit = [i for i in summed if any(crowded(f, i) for f in factors)]
    body = product(factors, span)
    return SumOver(tuple(explicit), body, span) if explicit else body


def rebuild(expr: Expr, ref=lambda node: node, op=lambda text: text) -> Expr:
    """`expr` with every reference replaced by `ref(node)` and every operator by `op(text)`."""
    if isinstance(expr, Ref):
        return ref(expr)
    if isinstance(expr, BinOp):
        return BinOp(op(expr.op), rebuild(expr.left, ref, op), rebuild(expr.right, ref, op), expr.span)
    if isinstance(expr, Neg):
        return Neg(rebuild(expr.operand, ref, op), expr.span)
    if isinstance(expr, Call):
        return Call(expr.function, rebuild(expr.arg, ref, op), expr.span)
    if isinstance(expr, (SumOver, Group, Transpose)):
        return replace(expr, body=rebuild(expr.body, ref, op))
    return expr


def as_index_ops(expr: Expr) -> Expr:
    """Juxtaposition (and `·`) is a plain product outside matrix notation."""
    return rebuild(expr, op=lambda text: "*" if text == " " else text)


# -- numpy einsum specs --------------------------------------------------------------------

def _spec_error(spec: str, message: str, span: Span) -> NotationError:
    return NotationError(f"einsum spec {spec!r}: {message}", span, IndexNotationError)


def einsum(spec: str, operands: list[Expr], span: Span, rank_of) -> tuple[Expr, tuple[str, ...]]:
    """`einsum("ij,jk->ik", X, W)` as `sum[j](X[i,j] W[j,k])`, and its output letters."""
    text = spec.replace(" ", "")
    if "..." in text:
        raise _spec_error(spec, "'...' (broadcast dimensions) is not supported: write every axis", span)
    inputs, arrow, output = text.partition("->")
    terms = inputs.split(",")
    for term in terms + [output]:
        for ch in term:
            if not ("a" <= ch <= "z" or "A" <= ch <= "Z"):
                raise _spec_error(spec, f"{ch!r} is not an index letter (a-z, A-Z)", span)
    if len(terms) != len(operands):
        raise _spec_error(spec, f"{len(terms)} operand{'s' * (len(terms) != 1)} in the spec, "
                          f"{len(operands)} given", span)
    letters = "".join(terms)
    if not arrow:
        output = "".join(sorted(ch for ch in set(letters) if letters.count(ch) == 1))
    for ch in output:
        if output.count(ch) > 1:
            raise _spec_error(spec, f"output index {ch!r} is repeated", span)
        if ch not in letters:
            raise _spec_error(spec, f"output index {ch!r} is not in any operand", span)
    factors = []
    for k, (term, operand) in enumerate(zip(terms, operands), 1):
        factors.append(_with_indices(operand, tuple(term), spec, k, span, rank_of))
    summed = tuple(dict.fromkeys(ch for ch in letters if ch not in output))
    body = product(factors, span)
    return (SumOver(summed, body, span) if summed else body), tuple(output)


def _with_indices(operand: Expr, term: tuple, spec: str, k: int, span: Span, rank_of) -> Expr:
    """An operand written without indices (`X`, `tanh(X)`, `2*X`) takes its spec letters."""
    for node in walk(operand):
        if isinstance(node, (SumOver, Transpose)):
            raise _spec_error(spec, f"operand {k} must be a name or an elementwise expression of names", node.span)

    def indexed(node: Ref) -> Ref:
        if node.indices:
            raise _spec_error(spec, f"operand {k} ({expr_text(operand)}) is written with indices; "
                              "einsum operands take theirs from the spec", node.span)
        rank = rank_of(node.name)
        if rank is not None and rank != len(term):
            raise _spec_error(spec, f"operand {k} ({node.name}) has {rank} ax{'es' if rank != 1 else 'is'}, "
                              f"the spec gives it {len(term)} ({''.join(term) or 'none'})", node.span)
        return Ref(node.name, term, node.span)
    return rebuild(operand, indexed)


# -- matrix notation -----------------------------------------------------------------------

class Axis:
    """One axis of one operand; `join` makes two axes one index."""

    def __init__(self, dim):
        self.dim, self.parent = dim, None  # dim: a dimension name, a number, or None (unknown)

    def root(self) -> "Axis":
        node = self
        while node.parent is not None:
            node = node.parent
        return node


def _dim_text(dim) -> str:
    return "?" if dim is None else str(dim)


def _shape_text(axes) -> str:
    return "[" + " x ".join(_dim_text(a.root().dim) for a in axes) + "]" if axes else "scalar"


def _algebra_line(text: str, op: str, shapes: list, result) -> str:
    """One line of seed 000's dimension algebra: `X W1 + B1 is [B x Z] + [1 x Z] = [B x Z]`."""
    if op == "call":
        return f"{text} is {_shape_text(result)}"
    if op == "summed":
        return f"{text} is the sum of all entries of {_shape_text(shapes[0])} = scalar"
    joined = (" " if op == "matmul" else f" {op} ").join(_shape_text(s) for s in shapes)
    return f"{text} is {joined} = {_shape_text(result)}"


@dataclass
class _Chain:
    """A product still being built: factors and the axes it contracts."""
    factors: list
    contracted: list = field(default_factory=list)


@dataclass
class _Sum:
    axes: list
    body: object


@dataclass
class _Indexed:
    name: str
    axes: tuple
    span: Span


class Matrix:
    """Translate one statement in matrix notation; `dims_of(name)` gives declared dims."""

    def __init__(self, statement: Statement, dims_of):
        self.statement, self.dims_of, self.algebra = statement, dims_of, []

    def fail(self, message: str, span: Span | None = None, kind=ShapeError) -> NotationError:
        return NotationError(f"{message} (in matrix notation: {self.statement.source})", span, kind)

    def join(self, a: Axis, b: Axis, what: str, span: Span) -> None:
        ra, rb = a.root(), b.root()
        if ra is rb:
            return
        if ra.dim is not None and rb.dim is not None and ra.dim != rb.dim:
            raise self.fail(f"{what}: dimensions {ra.dim} and {rb.dim} do not match", span)
        ra.parent = rb
        if rb.dim is None:
            rb.dim = ra.dim

    def translate(self) -> Statement:
        tree, axes = self.visit(self.statement.expr)
        letters = self.letters(axes, tree)
        indices = tuple(letters[id(a.root())] for a in axes)
        self.result_dims = tuple(a.root().dim for a in axes)
        expr = self.build(tree, letters)
        algebra = tuple(_algebra_line(*step) for step in self.algebra)
        return replace(self.statement, indices=indices, expr=expr, algebra=algebra)

    # -- shapes and joins --
    def visit(self, node: Expr):
        if isinstance(node, Num):
            return node, ()
        if isinstance(node, Ref):
            if node.indices:
                raise self.fail(f"{node.name}[{','.join(map(str, node.indices))}] has indices; a statement in "
                                "matrix notation writes every name without them", node.span, IndexNotationError)
            dims = self.dims_of(node.name)
            if not dims:
                return node, ()
            axes = tuple(Axis(d) for d in dims)
            return _Indexed(node.name, axes, node.span), axes
        if isinstance(node, Group):
            return self.visit(node.body)
        if isinstance(node, Neg):
            tree, axes = self.visit(node.operand)
            return ("neg", tree, node.span), axes
        if isinstance(node, Transpose):
            tree, axes = self.visit(node.body)
            if len(axes) > 2:
                raise self.fail("transpose of a tensor of rank above 2", node.span)
            return tree, axes[::-1]
        if isinstance(node, Call):
            tree, axes = self.visit(node.arg)
            if node.function == "sum":
                self.algebra.append((expr_text(node, True), "summed", [axes], ()))
                return _Sum(list(axes), tree), ()
            if axes:
                self.algebra.append((expr_text(node, True), "call", [axes], axes))
            return ("call", node.function, tree, node.span), axes
        if isinstance(node, SumOver):
            raise self.fail("sum[...] names indices; in matrix notation write sum(...) for the sum of all entries",
                            node.span, IndexNotationError)
        return self.binop(node)

    def binop(self, node: BinOp):
        left, la = self.visit(node.left)
        right, ra = self.visit(node.right)
        text = expr_text(node, True)
        if node.op in (" ", "@") and la and ra:
            return self.matmul(node, left, la, right, ra, text)
        if node.op == "@":
            raise self.fail(f"{text}: '@' multiplies vectors and matrices; a scalar is multiplied with '*'", node.span,
                            IndexNotationError)
        if node.op == "^":
            if ra:
                raise self.fail(f"{text}: the exponent must be a scalar", node.span)
            if len(la) == 2 and la[0].root().dim is not None and la[0].root().dim == la[1].root().dim:
                raise self.fail(f"{text} is ambiguous for a square matrix: write "
                                f"{expr_text(node.left)} * {expr_text(node.left)} for the elementwise square or "
                                f"{expr_text(node.left)} @ {expr_text(node.left)} for the matrix product",
                                node.span, IndexNotationError)
            return ("pow", left, right, node.span), la
        axes = self.broadcast(la, ra, text, node.span)
        if la and ra:
            self.algebra.append((text, {"*": "⊙"}.get(node.op, node.op), [la, ra], axes))
        if node.op in ("*", " ", "@"):
            return _Chain(self.chain(left) + self.chain(right), self.owned(left) + self.owned(right)), axes
        return ("op", node.op, left, right, node.span), axes

    @staticmethod
    def chain(tree) -> list:
        return tree.factors if isinstance(tree, _Chain) else [tree]

    @staticmethod
    def owned(tree) -> list:
        return tree.contracted if isinstance(tree, _Chain) else []

    def matmul(self, node, left, la, right, ra, text):
        if len(la) > 2 or len(ra) > 2:
            raise self.fail(f"{text}: matrix products take vectors and matrices, not rank {max(len(la), len(ra))}",
                            node.span)
        self.join(la[-1], ra[0], f"{text} is {_shape_text(la)} {_shape_text(ra)}", node.span)
        axes = la[:-1] + ra[1:]
        self.algebra.append((text, "matmul", [la, ra], axes))
        return _Chain(self.chain(left) + self.chain(right), self.owned(left) + self.owned(right) + [la[-1]]), axes

    def broadcast(self, la, ra, text, span):
        """numpy's rule, aligned on the right; a size-1 axis (a `1 x Z` bias) is repeated."""
        out = []
        for k in range(1, max(len(la), len(ra)) + 1):
            a = la[-k] if k <= len(la) else None
            b = ra[-k] if k <= len(ra) else None
            if a is None or b is None:
                out.append(a or b)
                continue
            da, db = a.root().dim, b.root().dim
            if da == 1 and db != 1:
                out.append(b)
            elif db == 1 and da != 1:
                out.append(a)
            else:
                self.join(a, b, f"{text} is {_shape_text(la)} and {_shape_text(ra)}", span)
                out.append(a)
        return tuple(reversed(out))

    # -- letters and syntax --
    def letters(self, result_axes, tree) -> dict:
        """Index letters: the result's axes first (`D` gives `d`), then the contracted ones."""
        taken, letters = set(), {}
        order = [a.root() for a in result_axes] + [a.root() for a in self.all_axes(tree)]
        for root in order:
            if id(root) in letters:
                continue
            if root.dim == 1:
                letters[id(root)] = 0
                continue
            letters[id(root)] = name = self.fresh(root.dim, taken)
            taken.add(name)
        return letters

    @staticmethod
    def fresh(dim, taken: set) -> str:
        if isinstance(dim, str):
            base = dim.lower()
            if base not in taken:
                return base
            return next(f"{base}{n}" for n in range(2, 10_000) if f"{base}{n}" not in taken)
        return next((ch for ch in _LETTERS if ch not in taken), None) or \
            next(f"i{n}" for n in range(2, 10_000) if f"i{n}" not in taken)

    def all_axes(self, tree):
        if isinstance(tree, _Indexed):
            yield from tree.axes
        elif isinstance(tree, _Chain):
            for factor in tree.factors:
                yield from self.all_axes(factor)
        elif isinstance(tree, _Sum):
            yield from self.all_axes(tree.body)
        elif isinstance(tree, tuple):
            for part in tree:
                if isinstance(part, (_Indexed, _Chain, _Sum, tuple)):
                    yield from self.all_axes(part)

    def build(self, tree, letters: dict, context: str = "top") -> Expr:
        span = self.statement.span
        if isinstance(tree, _Indexed):
            return Ref(tree.name, tuple(letters[id(a.root())] for a in tree.axes), tree.span)
        if isinstance(tree, _Chain):
            factors = [self.build(f, letters, "factor") for f in tree.factors]
            summed = list(dict.fromkeys(letters[id(a.root())] for a in tree.contracted))
            expr = implicit(factors, [s for s in summed if s != 0], span)
            return Group(expr, span) if context in ("denominator", "base", "neg") else expr
        if isinstance(tree, _Sum):
            body = self.build(tree.body, letters, "top")
            summed = tuple(dict.fromkeys(letters[id(a.root())] for a in tree.axes))
            summed = tuple(s for s in summed if s != 0)
            return SumOver(summed, body, span) if summed else body
        if not isinstance(tree, tuple):
            return tree
        kind = tree[0]
        if kind == "neg":
            return Neg(self.build(tree[1], letters, "neg"), tree[2])
        if kind == "call":
            return Call(tree[1], self.build(tree[2], letters, "top"), tree[3])
        if kind == "pow":
            return BinOp("^", self.build(tree[1], letters, "base"), self.build(tree[2], letters, "top"), tree[3])
        _, op, left, right, op_span = tree
        right_context = "denominator" if op == "/" else "term"
        expr = BinOp(op, self.build(left, letters, "term"), self.build(right, letters, right_context), op_span)
        return expr  # a sum as a base or denominator: printed in parentheses, read back the same


# -- a program's statements, as they come ----------------------------------------------------

class Notation:
    """What the statements so far say about each name, to read the next statement."""

    def __init__(self):
        self.declared: dict[str, tuple] = {}
        self.ranks: dict[str, int] = {}        # from indexed uses and left-hand sides
        self.dims: dict[str, tuple] = {}       # matrix-notation targets: their dimensions
        self.targets: set[str] = set()

    def declare(self, declaration: Declaration) -> None:
        name = declaration.name
        if name in self.declared:
            raise NotationError(f"{name} is declared twice", declaration.span)
        if name in self.targets:
            raise NotationError(f"{name} is declared after it is assigned; declarations describe inputs and "
                                "come first", declaration.span)
        known = self.ranks.get(name)
        if known is not None and known != len(declaration.dims):
            raise NotationError(f"{name} is declared with {len(declaration.dims)} axes but used with {known}",
                                declaration.span, IndexNotationError)
        self.declared[name] = declaration.dims

    def rank_of(self, name: str) -> int | None:
        dims = self.dims_of(name)
        return len(dims) if dims is not None else self.ranks.get(name)

    def dims_of(self, name: str):
        if name in self.dims:
            return self.dims[name]
        if name in self.declared:
            return self.declared[name]
        if name in self.ranks:
            return (None,) * self.ranks[name]
        return None

    def statement(self, statement: Statement) -> Statement:
        expr = statement.expr
        refs = [n for n in walk(expr) if isinstance(n, Ref)]
        indexed = [r for r in refs if r.indices]
        bare_tensors = [r for r in refs if not r.indices and (self.rank_of(r.name) or 0) > 0]
        matrix_ops = [n for n in walk(expr) if isinstance(n, Transpose) or isinstance(n, BinOp) and n.op == "@"]
        if statement.indices or indexed or any(isinstance(n, SumOver) for n in walk(expr)):
            if bare_tensors:
                r = bare_tensors[0]
                raise NotationError(
                    f"{r.name} has {self.rank_of(r.name)} axes but is written without indices next to indexed "
                    f"tensors: write {r.name}[...] with its indices, or the whole statement in matrix notation "
                    f"({statement.name} = ... with no indices anywhere)", r.span, IndexNotationError)
            if matrix_ops:
                raise NotationError("'@' and transposes belong to matrix notation; with indices, a product is "
                                    "juxtaposition and a transpose is swapped indices", _span(matrix_ops[0]),
                                    IndexNotationError)
            self.refuse_lookalikes(statement, near_indexed=True)
            result = replace(statement, expr=as_index_ops(expr))
        elif bare_tensors or matrix_ops:
            matrix = Matrix(statement, self.dims_of)
            result = matrix.translate()
            self.dims[statement.name] = matrix.result_dims
        else:
            self.refuse_lookalikes(statement, near_indexed=False)
            result = replace(statement, expr=as_index_ops(expr))
        self.note(result)
        return result

    def note(self, statement: Statement) -> None:
        for node in walk(statement.expr):
            if isinstance(node, Ref) and node.indices and node.name not in self.ranks:
                self.ranks[node.name] = len(node.indices)
        self.ranks[statement.name] = len(statement.indices)
        self.targets.add(statement.name)

    def refuse_lookalikes(self, statement: Statement, near_indexed: bool) -> None:
        """Refuse capitalised names without indices next to indexed tensors (or to each other) in a product.

        They look like matrices; read as scalars they would silently mean something else.
        """
        def looks_like_matrix(node):
            return (isinstance(node, Ref) and not node.indices and node.name[:1].isupper()
                    and node.name not in self.declared and node.name not in self.targets)
        for node in walk(statement.expr):
            if not (isinstance(node, BinOp) and node.op in ("*", " ", "@")):
                continue
            members = factors(node)
            lookalikes = [f for f in members if looks_like_matrix(f)]
            neighbours = lookalikes[1:] + ([f for f in members if isinstance(f, Ref) and f.indices] if near_indexed
                                           else [])
            if lookalikes and neighbours:
                names = " ".join(f.name for f in lookalikes)
                first = lookalikes[0].name
                raise NotationError(
                    f"{names} without indices next to {'each other' if len(lookalikes) > 1 else 'indexed tensors'} "
                    f"look{'s' * (len(lookalikes) == 1)} like matri{'ces' if len(lookalikes) > 1 else 'x'}, but "
                    f"undeclared names without indices are scalars. Readings: indices ({first}[i,j] ...), "
                    f"matrix notation (declare `{first} is B x D` first), or scalars (declare `{first} is scalar`)",
                    lookalikes[0].span, IndexNotationError)


def _span(node) -> Span | None:
    return getattr(node, "span", None)
