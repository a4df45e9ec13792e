"""The parser: text to syntax records, with spans, never evaluating anything."""

from fractions import Fraction

import pytest

from einmlp.parse import parse_syntax
from einmlp.syntax import BinOp, Call, FunctionDef, Neg, Num, Ref, SumOver


def test_article_program_parses_into_statements_and_definitions():
    program = parse_syntax("f1(x) = x^2\nA[i,k] = X[i,j] W1[j,k]\nYhat[i,0] = f2(f1(A[i,k]) W2[k,0])")
    assert [f.name for f in program.functions] == ["f1"]
    assert isinstance(program.functions[0], FunctionDef) and program.functions[0].param == "x"
    assert [s.name for s in program.statements] == ["A", "Yhat"]
    assert program.statements[1].indices == ("i", 0)


@pytest.mark.parametrize("text, expected", [
    ("L = a b", BinOp("*", Ref("a", (), None), Ref("b", (), None), None)),
    ("L = a - b", BinOp("-", Ref("a", (), None), Ref("b", (), None), None)),
    ("L = -a^2", Neg(BinOp("^", Ref("a", (), None), Num(Fraction(2), None), None), None)),
    ("L = a ** 2", BinOp("^", Ref("a", (), None), Num(Fraction(2), None), None)),
    ("L = 2.5e-1", Num(Fraction(1, 4), None)),
    ("L = sum[i,j](X[i,j])", SumOver(("i", "j"), Ref("X", ("i", "j"), None), None)),
    ("L = tanh(x)", Call("tanh", Ref("x", (), None), None)),
])
def test_expression_shapes(text, expected):
    def strip(node):
        if isinstance(node, tuple):
            return tuple(strip(n) for n in node)
        if hasattr(node, "__dataclass_fields__"):
            return type(node).__name__, tuple(strip(getattr(node, f)) for f in node.__dataclass_fields__ if f != "span")
        return node
    assert strip(parse_syntax(text).statements[0].expr) == strip(expected)


def test_power_is_right_associative_and_binds_tighter_than_product():
    expr = parse_syntax("L = a b^c^d").statements[0].expr
    assert expr.op == "*" and expr.right.op == "^" and expr.right.right.op == "^"


def test_line_breaks_inside_brackets_continue_the_statement():
    program = parse_syntax("L = tanh(X[i,j]\n   W[j,k])  # a comment\nM = L")
    assert [s.name for s in program.statements] == ["L", "M"]


def test_spans_point_at_the_source():
    statement = parse_syntax("\n  A[i] = x[i]").statements[0]
    assert (statement.span.line, statement.span.column) == (2, 3)
    assert statement.source == "A[i] = x[i]"
