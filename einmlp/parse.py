"""Tokenizer and recursive-descent parser: text to `syntax.Program`, never eval."""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from . import spelling
from .errors import ParseError
from .notation import Notation, NotationError, as_index_ops, crowded, einsum, factors, implicit, rebuild, walk
from .syntax import BinOp, Call, Declaration, Expr, FunctionDef, Group, Neg, Num, Program, Ref, Span, Statement, \
    SumOver, Transpose

MAX_NESTING = 100  # parentheses, calls and unary minus inside one another
MAX_DEPTH = 250    # depth of the resulting tree: long chains like a+b+c+... count too
MAX_DIGITS = 40    # significant digits of a number literal
MAX_EXPONENT = 300  # |e| of a literal's decimal exponent: its value stays a finite float
MAX_LINE = 100_000  # characters in one line: longer ones are refused before they are read

# control characters other than tab and line feed (carriage returns of CRLF are dropped first)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")

_TOKEN = re.compile(
    r"(?P<space>[ \t]+)|(?P<comment>\#[^\n]*)|(?P<newline>\n|;)"
    r"|(?P<number>\d+\.\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|\d+(?:[eE][-+]?\d+)?)"
    r"|(?P<op>\*\*|\.T(?![A-Za-z0-9_])|[-+*/^()\[\],=@])"
    r"|(?P<string>\"[^\"\n]{0,200}\"|'[^'\n]{0,200}')"
)
# other spellings of operators: products, Hadamard, minus, transpose
_UNICODE_OPS = {"\u00b7": "·", "\u22c5": "·", "\u00d7": "·", "\u2299": "*", "\u2212": "-", "\u1d40": ".T",
                "\u2211": "sum"}


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # name, number, op, string, newline, end
    text: str
    span: Span


class _Tokens:
    """The token list under construction, with the bracket depth that decides line ends."""

    def __init__(self, text: str):
        self.text, self.items, self.depth, self.line, self.line_start = text, [], 0, 1, 0
        self.end = Span(1, 1)  # just after the last token: where the input ends, for messages

    def span(self, offset: int) -> Span:
        return Span(self.line, offset - self.line_start + 1)

    def add(self, kind: str, value: str, offset: int) -> None:
        if kind == "op":
            self.depth += 1 if value in "([" else (-1 if value in ")]" else 0)
        self.items.append(Token(kind, value, self.span(offset)))
        if kind != "newline":
            self.end = self.span(offset + len(value))

    def name(self, pos: int) -> int:
        """A name with its spelling read (`Ŷ_i0` is Yhat[i,0]); returns where it ends."""
        try:
            name = spelling.read_name(self.text, pos)
        except spelling.SpellingError as exc:
            raise _error(self.text, self.span(exc.offset), str(exc)) from None
        text = "sum" if self.text[pos] in "\u03a3\u2211" and name.indices is not None else name.text
        self.add("name", text, pos)
        if name.indices is not None:
            self.add("op", "[", name.index_offsets[0] - 1 if name.index_offsets else pos)
            for k, (index, offset) in enumerate(zip(name.indices, name.index_offsets)):
                if k:
                    self.add("op", ",", offset)
                self.add("number" if isinstance(index, int) else "name", str(index), offset)
            self.add("op", "]", name.end - 1)
        return name.end

    def superscript(self, pos: int) -> int:
        """`²` after a name, `)` or `]` is a power."""
        digits, end = spelling.superscript_power(self.text, pos)
        previous = self.items[-1] if self.items else None
        if previous is None or not (previous.kind in ("name", "number") or previous.text in (")", "]")):
            raise _error(self.text, self.span(pos), f"superscript {self.text[pos:end]!r} has nothing to raise")
        if digits == "1" and previous.kind == "name":
            raise _error(self.text, self.span(pos), f"{previous.text}¹ without indices: write "
                         f"{previous.text}1 for the name (a layer), or {previous.text}^1 for the power")
        self.add("op", "^", pos)
        self.add("number", digits, pos)
        return end


def tokenize(text: str) -> list[Token]:
    """Split text into tokens; line breaks inside brackets do not end a statement."""
    tokens, pos = _Tokens(text), 0
    while pos < len(text):
        ch = text[pos]
        if ch in _UNICODE_OPS and not (ch == "\u2211" and text.startswith("_", pos + 1)):
            tokens.add("name" if ch == "\u2211" else "op", _UNICODE_OPS[ch], pos)
            pos += 1
            continue
        if ch in spelling.SUPERSCRIPTS or ch == "\u207d":
            pos = tokens.superscript(pos)
            continue
        if ch == "\u2211" or spelling.starts_name(text, pos):
            pos = tokens.name(pos)
            continue
        match = _TOKEN.match(text, pos)
        if not match:
            raise _error(text, tokens.span(pos), f"unexpected character {ch!r}")
        kind, value = match.lastgroup, match.group()
        if kind == "newline":
            if tokens.depth <= 0:
                tokens.add("newline", value, pos)
            if value == "\n":
                tokens.line, tokens.line_start = tokens.line + 1, match.end()
        elif kind not in ("space", "comment"):
            tokens.add(kind, value, pos)
        pos = match.end()
    # the end of input sits just after the last token: an unclosed bracket is reported on its
    # own line, not past the file's final line break
    tokens.items += [Token("newline", "", tokens.end), Token("end", "", tokens.end)]
    return tokens.items


def _error(text: str, span: Span, message: str) -> ParseError:
    start = 0
    for _ in range(span.line - 1):
        start = text.find("\n", start) + 1
    end = text.find("\n", start)
    source_line = text[start:end if end >= 0 else len(text)]
    return ParseError(message, span.line, span.column, _CONTROL.sub("?", source_line[:200]))


def _describe(token: Token) -> str:
    return {"newline": "end of line", "end": "end of input"}.get(token.kind, repr(token.text))


class _Parser:
    def __init__(self, text: str):
        self.text, self.tokens, self.pos, self.depth = text, tokenize(text), 0, 0
        self.lines = text.split("\n")
        # an einsum's expression by id -> (the expression, its output letters, whether it must be a
        # whole right-hand side); holding the expression keeps its id from being reused
        self.einsums: dict[int, tuple] = {}
        self.notation_rank = lambda name: None

    # -- token helpers -------------------------------------------------------------------
    @property
    def tok(self) -> Token:
        return self.tokens[self.pos]

    def peek(self, offset: int = 1) -> Token:
        return self.tokens[min(self.pos + offset, len(self.tokens) - 1)]

    def at(self, text: str) -> bool:
        return self.tok.kind == "op" and self.tok.text == text

    def take(self) -> Token:
        token = self.tok
        self.pos += 1
        return token

    def expect(self, text: str, what: str = "") -> Token:
        if not self.at(text):
            raise self.error(f"expected {what or repr(text)}, found {_describe(self.tok)}")
        return self.take()

    def expect_name(self, what: str) -> Token:
        if self.tok.kind != "name":
            raise self.error(f"expected {what}, found {_describe(self.tok)}")
        return self.take()

    def error(self, message: str, span: Span | None = None) -> ParseError:
        return _error(self.text, span or self.tok.span, message)

    # -- statements ----------------------------------------------------------------------
    def program(self) -> Program:
        statements, functions, declarations = [], [], []
        notation = Notation()
        self.notation_rank = notation.rank_of
        while self.tok.kind != "end":
            if self.tok.kind == "newline":
                self.take()
                continue
            start = self.pos
            if self.is_declaration():
                declaration = self.declaration(self.source_of(start))
                self.noted(notation.declare, declaration)
                declarations.append(declaration)
                continue
            item = self.definition() if self.is_definition() else self.statement()
            if self.tok.kind != "newline":
                raise self.error(f"expected end of line, found {_describe(self.tok)}")
            source = self.source_of(start)
            body = item.body if isinstance(item, FunctionDef) else item.expr
            if _depth(body) > MAX_DEPTH:
                raise self.error(f"expression nested more than {MAX_DEPTH} levels deep; split it into "
                                 "intermediate statements", self.tokens[start].span)
            if isinstance(item, FunctionDef):
                self.refuse_matrix_ops(item.body, f"the definition of {item.name}")
                functions.append(FunctionDef(item.name, item.param, as_index_ops(item.body), item.span, source))
            else:
                statement = Statement(item.name, item.indices, item.expr, item.span, source)
                statements.append(self.noted(notation.statement, statement))
        return Program(tuple(statements), tuple(functions), tuple(declarations))

    def noted(self, method, *args):
        """Run a notation step, turning its complaint into an error with a caret."""
        try:
            return method(*args)
        except NotationError as exc:
            if exc.kind is not None and exc.kind is not ParseError:
                where = f"line {exc.span.line}: " if exc.span else ""
                raise exc.kind(where + str(exc)) from None
            raise self.error(str(exc), exc.span) from None

    def refuse_matrix_ops(self, body: Expr, where: str) -> None:
        for node in walk(body):
            if isinstance(node, Transpose) or isinstance(node, BinOp) and node.op == "@":
                raise self.error(f"'@' and transposes are matrix notation, which {where} cannot use", node.span)

    def is_declaration(self) -> bool:
        return self.tok.kind == "name" and self.peek().kind == "name" and self.peek().text == "is"

    def declaration(self, source: str) -> Declaration:
        """`X is B x D`, `W1 is 3 x 4`, `s is scalar`: a name's rank and dimensions."""
        name = self.take()
        self.take()
        if self.tok.kind == "name" and self.tok.text == "scalar" and self.peek().kind == "newline":
            self.take()
            return Declaration(name.text, (), name.span, source)
        dims = [self.dimension()]
        while self.tok.kind != "newline":
            token = self.tok
            if token.kind == "name" and token.text[:1] == "x" and token.text[1:].isdigit():
                self.take()  # 10x3: the x and the next number were read as one name
                dims.append(self.dimension_number(Token("number", token.text[1:], token.span)))
                continue
            if not (token.kind == "name" and token.text == "x" or self.at("·") or self.at("*")):
                raise self.error(f"expected 'x' between dimensions (X is B x D), found {_describe(token)}")
            self.take()
            dims.append(self.dimension())
        return Declaration(name.text, tuple(dims), name.span, source)

    def dimension(self):
        token = self.take()
        if token.kind == "number":
            return self.dimension_number(token)
        if token.kind == "name" and not self.at("["):
            return token.text
        raise self.error("expected a dimension: a name (B, D) or a positive integer", token.span)

    def dimension_number(self, token: Token) -> int:
        if not token.text.isdigit() or len(token.text) > 10 or not 0 < int(token.text) <= 10 ** 9:
            raise self.error(f"a dimension is a positive integer up to 10^9, not {token.text[:20]}", token.span)
        return int(token.text)

    def source_of(self, start: int) -> str:
        return self.lines[self.tokens[start].span.line - 1].strip()

    def is_definition(self) -> bool:
        return (self.tok.kind == "name" and self.peek().text == "(" and self.peek(2).kind == "name"
                and self.peek(3).text == ")" and self.peek(4).text == "=")

    def definition(self) -> FunctionDef:
        name = self.take()
        self.expect("(")
        param = self.take()
        self.expect(")")
        self.expect("=")
        return FunctionDef(name.text, param.text, self.expr(), name.span, "")

    def statement(self) -> Statement:
        name = self.expect_name("a statement such as Y[i] = ... or f(x) = ...")
        indices = self.index_list() if self.at("[") else ()
        self.expect("=", "'=' after the left-hand side")
        expr = self.expr()
        for node in walk(expr):
            if self.einsum_of(node)[1] and node is not expr:
                raise self.error("this einsum multiplies names elementwise inside an operand; inside a larger "
                                 "expression its output indices would be summed there: give it its own "
                                 "statement (C = einsum(...)) and use C", node.span)
        output = self.einsum_of(expr)[0]
        if output is not None:  # C = einsum("ij,jk->ik", X, W) is C[i,k] = X[i,j] W[j,k]
            if indices and len(indices) != len(output):
                raise self.error(f"{name.text} has {len(indices)} indices but the einsum gives {len(output)} axes",
                                 name.span)
            rename = dict(zip(output, indices)) if indices else {}
            expr = _einsum_as_statement(expr, rename)
            indices = indices or output
        return Statement(name.text, indices, expr, name.span, "")

    def index_list(self) -> tuple:
        self.expect("[")
        indices = [self.index()]
        while self.at(","):
            self.take()
            indices.append(self.index())
        self.expect("]", "',' or ']' in the index list")
        return tuple(indices)

    def index(self):
        token = self.take()
        if token.kind == "name":
            return token.text
        if token.kind == "number" and token.text.isdigit():
            if len(token.text) > 9:
                raise self.error(f"a fixed index is 0 (the only entry of a size-1 axis), not {token.text[:20]}...",
                                 token.span)
            return int(token.text)
        raise self.error(f"expected an index name or a non-negative integer, found {_describe(token)}",
                         token.span)

    # -- expressions ---------------------------------------------------------------------
    def nested(self, parse):
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise self.error(f"expression nested more than {MAX_NESTING} levels deep")
        try:
            return parse()
        finally:
            self.depth -= 1

    def expr(self) -> Expr:
        return self.nested(self._expr)

    def _expr(self) -> Expr:
        left = self.product()
        for _ in range(MAX_DEPTH + 1):
            if not (self.at("+") or self.at("-")):
                return left
            op = self.take()
            left = BinOp(op.text, left, self.product(), op.span)
        raise self.too_long()

    def too_long(self) -> ParseError:
        return self.error(f"expression nested more than {MAX_DEPTH} levels deep; split it into "
                          "intermediate statements")

    def starts_atom(self) -> bool:
        return self.tok.kind in ("name", "number") or self.at("(")

    def product(self) -> Expr:
        left = self.unary()
        for _ in range(MAX_DEPTH + 1):
            if not (self.at("*") or self.at("/") or self.at("@") or self.at("·") or self.starts_atom()):
                return left
            op = self.take().text if not self.starts_atom() else " "  # juxtaposition
            op = " " if op == "·" else op
            span = self.tok.span
            left = BinOp(op, left, self.unary(), span)
        raise self.too_long()

    def unary(self) -> Expr:
        if self.at("-"):
            op = self.take()
            return Neg(self.nested(self.unary), op.span)
        if self.at("+"):
            self.take()
            return self.nested(self.unary)
        return self.power()

    def power(self) -> Expr:
        base = self.atom()
        while self.at(".T"):
            base = Transpose(base, self.take().span)
        if self.at("^") or self.at("**"):
            op = self.take()
            return BinOp("^", base, self.nested(self.unary), op.span)
        return base

    def atom(self) -> Expr:
        token = self.tok
        if token.kind == "number":
            self.take()
            return Num(self.number(token), token.span)
        if self.at("("):
            self.take()
            inner = self.expr()
            self.expect(")", "')'")
            scoped = isinstance(inner, BinOp) and inner.op in ("*", "/", " ", "@")
            return Group(inner, token.span) if scoped else inner
        if token.kind == "string":
            raise self.error("a quoted string is only an einsum spec: einsum(\"ij,jk->ik\", X, W)")
        if token.kind != "name":
            raise self.error(f"expected a number, a name or '(', found {_describe(token)}")
        self.take()
        if token.text == "sum" and self.at("["):
            return self.explicit_sum(token)
        if token.text == "einsum" and self.at("(") and self.peek().kind == "string":
            return self.einsum(token)
        if self.at("["):
            return Ref(token.text, self.index_list(), token.span)
        if self.at("("):
            self.take()
            arg = self.expr()
            if self.at(","):
                raise self.error(f"function {token.text!r} takes one argument; elementwise functions are unary")
            self.expect(")", "')' closing the call")
            return Call(token.text, arg, token.span)
        return Ref(token.text, (), token.span)

    def number(self, token: Token) -> Fraction:
        """The exact value of a literal, refusing ones too long or too large for a float."""
        mantissa, _, exponent = token.text.lower().partition("e")
        whole, _, fraction = mantissa.partition(".")
        digits = (whole + fraction).lstrip("0")
        if len(digits) > MAX_DIGITS:
            raise self.error(f"number {token.text[:20]}... has more than {MAX_DIGITS} digits", token.span)
        if exponent and abs(int(exponent)) > MAX_EXPONENT:
            raise self.error(f"number {token.text}: exponents beyond +-{MAX_EXPONENT} are out of range", token.span)
        power = int(exponent or 0) - len(fraction)  # the value is digits times 10^power
        if digits and abs(power + len(digits) - 1) > MAX_EXPONENT + MAX_DIGITS:  # 0.000...01, 8000 zeros
            raise self.error(f"number {token.text[:20]}... is out of range: its first digit is beyond "
                             f"10^+-{MAX_EXPONENT + MAX_DIGITS}", token.span)
        value = Fraction(int(digits or "0")) * Fraction(10) ** power
        if value > Fraction(10) ** MAX_EXPONENT:
            raise self.error(f"number {token.text} is too large", token.span)
        return value

    def einsum(self, token: Token) -> Expr:
        """`einsum("ij,jk->ik", X, W)`: the contraction numpy computes, in index notation."""
        self.take()
        spec = self.take()
        operands = []
        while self.at(","):
            self.take()
            operands.append(self.expr())
        self.expect(")", "',' or ')' in einsum(...)")
        expr, output = self.noted(einsum, spec.text[1:-1], operands, spec.span, self.notation_rank)
        self.einsums[id(expr)] = (expr, output, any(crowded(expr, ch) for ch in output))
        return expr

    def einsum_of(self, node: Expr) -> tuple:
        """(output letters, must be whole) if `node` is an einsum's expression, else (None, False)."""
        found = self.einsums.get(id(node))
        return found[1:] if found is not None and found[0] is node else (None, False)

    def explicit_sum(self, token: Token) -> SumOver:
        indices = self.index_list()
        for index in indices:
            if not isinstance(index, str):
                raise self.error(f"sum[...] takes index names, not the number {index}", token.span)
        if not self.at("("):
            raise self.error("expected '(' after sum[...]: write sum[j](expression)")
        self.take()
        body = self.expr()
        self.expect(")", "')' closing sum[...](")
        return SumOver(tuple(indices), body, token.span)


def _einsum_as_statement(expr: Expr, rename: dict) -> Expr:
    """A whole right-hand side einsum, its letters renamed to the left side's.

    Its sum is written by the Einstein rule where that reads the same (`C[i,k] = X[i,j] W[j,k]`).
    """
    summed = set(expr.indices) if isinstance(expr, SumOver) else set()
    if rename and set(rename.values()) & summed - set(rename):
        raise ParseError(f"the einsum's summed letters {sorted(summed)} clash with the left side's "
                         f"indices {sorted(rename.values())}; choose other letters")
    expr = rebuild(expr, lambda ref: Ref(ref.name, tuple(rename.get(i, i) for i in ref.indices), ref.span))
    if isinstance(expr, SumOver):
        return implicit(factors(expr.body), list(expr.indices), expr.span)
    return expr


def _depth(expr: Expr) -> int:
    """Depth of a syntax tree, without recursion."""
    deepest, stack = 0, [(expr, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(node, BinOp):
            stack += [(node.left, depth + 1), (node.right, depth + 1)]
        elif isinstance(node, (Neg,)):
            stack.append((node.operand, depth + 1))
        elif isinstance(node, Call):
            stack.append((node.arg, depth + 1))
        elif isinstance(node, (SumOver, Group, Transpose)):
            stack.append((node.body, depth + 1))
    return deepest


def parse_syntax(text: str) -> Program:
    """Parse source text into syntax records; raises `ParseError` with a caret."""
    if not isinstance(text, str):
        raise ParseError(f"expected program text as a str, got {type(text).__name__}")
    text = text.replace("\r\n", "\n")
    for number, line in enumerate(text.split("\n"), 1):
        if len(line) > MAX_LINE:
            raise ParseError(f"line {number} is longer than {MAX_LINE} characters; split it into statements")
    control = _CONTROL.search(text)
    if control:
        line = text.count("\n", 0, control.start()) + 1
        column = control.start() - (text.rfind("\n", 0, control.start()) + 1) + 1
        raise _error(text, Span(line, column), f"control character {control.group()!r} is not allowed "
                     "(only tab and line breaks)")
    return _Parser(text).program()
