"""Tokenizer and recursive-descent parser: text to `syntax.Program`, never eval."""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from .errors import ParseError
from .syntax import BinOp, Call, Expr, FunctionDef, Group, Neg, Num, Program, Ref, Span, Statement, SumOver

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
    r"|(?P<name>[A-Za-z][A-Za-z0-9_]*)|(?P<op>\*\*|[-+*/^()\[\],=])"
)


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # name, number, op, newline, end
    text: str
    span: Span


def tokenize(text: str) -> list[Token]:
    """Split text into tokens; line breaks inside brackets do not end a statement."""
    tokens, depth, pos, line, line_start = [], 0, 0, 1, 0
    end = Span(1, 1)  # just after the last token: where an unclosed bracket is reported, not past its line break
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        span = Span(line, pos - line_start + 1)
        if not match:
            raise _error(text, span, f"unexpected character {text[pos]!r}")
        kind, value = match.lastgroup, match.group()
        if kind == "op":
            depth += value in "([" and 1 or (-1 if value in ")]" else 0)
        if kind == "newline":
            if depth <= 0:
                tokens.append(Token("newline", value, span))
            if value == "\n":
                line, line_start = line + 1, match.end()
        elif kind not in ("space", "comment"):
            tokens.append(Token(kind, value, span))
            end = Span(line, match.end() - line_start + 1)
        pos = match.end()
    tokens.append(Token("newline", "", end))
    tokens.append(Token("end", "", end))
    return tokens


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
        statements, functions = [], []
        while self.tok.kind != "end":
            if self.tok.kind == "newline":
                self.take()
                continue
            start = self.pos
            item = self.definition() if self.is_definition() else self.statement()
            if self.tok.kind != "newline":
                raise self.error(f"expected end of line, found {_describe(self.tok)}")
            source = self.source_of(start)
            body = item.body if isinstance(item, FunctionDef) else item.expr
            if _depth(body) > MAX_DEPTH:
                raise self.error(f"expression nested more than {MAX_DEPTH} levels deep; split it into "
                                 "intermediate statements", self.tokens[start].span)
            if isinstance(item, FunctionDef):
                functions.append(FunctionDef(item.name, item.param, item.body, item.span, source))
            else:
                statements.append(Statement(item.name, item.indices, item.expr, item.span, source))
        return Program(tuple(statements), tuple(functions))

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
        return Statement(name.text, indices, self.expr(), name.span, "")

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
            if not (self.at("*") or self.at("/") or self.starts_atom()):
                return left
            op = self.take().text if not self.starts_atom() else "*"
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
            scoped = isinstance(inner, BinOp) and inner.op in "*/"
            return Group(inner, token.span) if scoped else inner
        if token.kind != "name":
            raise self.error(f"expected a number, a name or '(', found {_describe(token)}")
        self.take()
        if token.text == "sum" and self.at("["):
            return self.explicit_sum(token)
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
        digits = mantissa.replace(".", "").lstrip("0")
        if len(digits) > MAX_DIGITS:
            raise self.error(f"number {token.text[:20]}... has more than {MAX_DIGITS} digits", token.span)
        if exponent and abs(int(exponent)) > MAX_EXPONENT:
            raise self.error(f"number {token.text}: exponents beyond +-{MAX_EXPONENT} are out of range", token.span)
        value = Fraction(token.text)
        if value > Fraction(10) ** MAX_EXPONENT:
            raise self.error(f"number {token.text} is too large", token.span)
        return value

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
        elif isinstance(node, (SumOver, Group)):
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
