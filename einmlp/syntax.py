"""The surface language as small immutable records, one per construct.

Grammar (one statement or definition per line; `#` starts a comment; a line break
inside brackets or parentheses continues the statement)::

    program    := (statement | definition | declaration)*
    definition := NAME '(' NAME ')' '=' expr                # f(x) = x^2
    declaration := NAME 'is' (dim ('x' dim)* | 'scalar')     # W1 is D x Z, X is 10 x 3
    statement  := NAME ('[' index (',' index)* ']')? '=' expr
    index      := NAME | INTEGER
    expr       := product (('+' | '-') product)*
    product    := unary (('*' | '/')? unary)*               # juxtaposition multiplies
    unary      := '-' unary | power
    power      := atom (('^' | '**') unary)?
    atom       := NUMBER | NAME '[' index, ... ']' | NAME '(' expr ')'
                | 'sum' '[' NAME, ... ']' '(' expr ')' | NAME | '(' expr ')'

Names may be spelled with subscripts and Unicode (`spelling`), contractions as numpy
einsum specs, and whole statements in matrix notation over declared shapes (`notation`);
each is read into the records below, so later stages see one language.

Parentheses around a product are kept as a `Group`: they scope the product's sums as a
call does (`1 / (y[h] y[h])` is `1 / sum_h y[h]^2`).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

Index = str | int  # an index name, or a fixed position on an axis


@dataclass(frozen=True, slots=True)
class Span:
    line: int    # 1-based line of the first character
    column: int  # 1-based column of the first character


@dataclass(frozen=True, slots=True)
class Num:
    value: Fraction | float  # exact for integers and decimals, float for exponents
    span: Span


@dataclass(frozen=True, slots=True)
class Ref:
    name: str                 # tensor, target, scalar or (in a definition) the parameter
    indices: tuple[Index, ...]  # empty for a scalar
    span: Span


@dataclass(frozen=True, slots=True)
class Call:
    function: str  # built-in, defined or abstract elementwise function
    arg: "Expr"
    span: Span


@dataclass(frozen=True, slots=True)
class BinOp:
    op: str  # one of + - * / ^
    left: "Expr"
    right: "Expr"
    span: Span


@dataclass(frozen=True, slots=True)
class Neg:
    operand: "Expr"
    span: Span


@dataclass(frozen=True, slots=True)
class SumOver:
    indices: tuple[str, ...]  # summed explicitly, as in sum[i,j](...)
    body: "Expr"
    span: Span


@dataclass(frozen=True, slots=True)
class Transpose:
    body: "Expr"  # `X.T` or `Xᵀ`: matrix notation only, translated away before any later stage
    span: Span


@dataclass(frozen=True, slots=True)
class Group:
    body: "Expr"  # a parenthesised product: its repeated indices are summed inside
    span: Span


Expr = Num | Ref | Call | BinOp | Neg | SumOver | Group | Transpose


@dataclass(frozen=True, slots=True)
class Statement:
    name: str
    indices: tuple[Index, ...]  # left-hand side; an integer declares a size-1 axis
    expr: Expr
    span: Span
    source: str  # the statement's own text, for messages
    algebra: tuple[str, ...] = ()  # matrix notation: the dimension algebra, one line per operation


@dataclass(frozen=True, slots=True)
class Declaration:
    """`X is B x D`: the rank of X, its dimension names, and numbers where given."""

    name: str
    dims: tuple[str | int, ...]  # () declares a scalar
    span: Span
    source: str


@dataclass(frozen=True, slots=True)
class FunctionDef:
    name: str
    param: str
    body: Expr
    span: Span
    source: str


@dataclass(frozen=True, slots=True)
class Program:
    statements: tuple[Statement, ...]
    functions: tuple[FunctionDef, ...]
    declarations: tuple[Declaration, ...] = ()
