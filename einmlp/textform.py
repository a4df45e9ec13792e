"""Print syntax back as the bracket spelling: `Program.text_form`, and how einmlp read a line.

Parentheses are printed exactly where the grammar needs them, and around every `Group`
(a parenthesised product scopes its sums), so printed text parses back to the same program.
"""

from __future__ import annotations

from fractions import Fraction

from .syntax import BinOp, Call, Declaration, Expr, FunctionDef, Group, Neg, Num, Program, Ref, Statement, SumOver, \
    Transpose

_SUM, _PRODUCT, _UNARY, _POWER, _ATOM = range(5)


def number_text(value) -> str:
    """A number as the program would write it: 3, 1/2, 0.25."""
    if isinstance(value, Fraction):
        if value.denominator == 1:
            return str(value.numerator)
        text = f"{float(value)!r}"
        return text if Fraction(text) == value else f"({value.numerator}/{value.denominator})"
    return repr(float(value))


def _level(expr: Expr) -> int:
    if isinstance(expr, BinOp):
        return _SUM if expr.op in "+-" else (_POWER if expr.op == "^" else _PRODUCT)
    if isinstance(expr, Neg):
        return _UNARY
    if isinstance(expr, Num) and isinstance(expr.value, Fraction) and expr.value.denominator != 1 \
            and not number_text(expr.value)[0].isdigit():
        return _PRODUCT  # printed as a fraction
    return _ATOM


def _wrap(expr: Expr, least: int, matrix: bool) -> str:
    text = expr_text(expr, matrix)
    return f"({text})" if _level(expr) < least else text


def _starts_tight(text: str) -> bool:
    """Juxtaposing before a number or a minus would read differently: use '*' there."""
    return text[:1].isdigit() or text[:1] in "-."


def expr_text(expr: Expr, matrix: bool = False) -> str:
    """The bracket spelling of one expression.

    With `matrix`, as matrix notation writes it: juxtaposition is the matrix product and `*`
    the elementwise one.
    """
    if isinstance(expr, Num):
        return number_text(expr.value)
    if isinstance(expr, Ref):
        return expr.name + (f"[{','.join(map(str, expr.indices))}]" if expr.indices else "")
    if isinstance(expr, Call):
        return f"{expr.function}({expr_text(expr.arg, matrix)})"
    if isinstance(expr, SumOver):
        return f"sum[{','.join(expr.indices)}]({expr_text(expr.body, matrix)})"
    if isinstance(expr, Group):
        return f"({expr_text(expr.body, matrix)})"
    if isinstance(expr, Transpose):
        return f"{_wrap(expr.body, _ATOM, matrix)}.T"
    if isinstance(expr, Neg):
        return f"-{_wrap(expr.operand, _UNARY, matrix)}"
    left_least, right_least = {"+": (_SUM, _PRODUCT), "-": (_SUM, _PRODUCT), "^": (_ATOM, _UNARY)}.get(
        expr.op, (_PRODUCT, _UNARY))
    left, right = _wrap(expr.left, left_least, matrix), _wrap(expr.right, right_least, matrix)
    if matrix and expr.op in ("*", "@"):
        return f"{left} {expr.op} {right}"
    if expr.op in ("*", " "):
        return f"{left}*{right}" if _starts_tight(right) or expr.op == "*" and isinstance(expr.left, Num) \
            else f"{left} {right}"
    if expr.op == "^":
        return f"{left}^{right}"
    return f"{left} {expr.op} {right}"


def statement_text(statement: Statement) -> str:
    """`C[i,k] = X[i,j] W[j,k]`."""
    lhs = statement.name + (f"[{','.join(map(str, statement.indices))}]" if statement.indices else "")
    return f"{lhs} = {expr_text(statement.expr)}"


def declaration_text(declaration: Declaration) -> str:
    """`X is B x D`, or `s is scalar`."""
    return f"{declaration.name} is {' x '.join(map(str, declaration.dims)) or 'scalar'}"


def function_text(function: FunctionDef) -> str:
    """`f(x) = x^2`."""
    return f"{function.name}({function.param}) = {expr_text(function.body)}"


def program_text(program: Program) -> str:
    """Declarations, definitions, then statements, one per line, in the bracket spelling."""
    lines = [declaration_text(d) for d in program.declarations]
    lines += [function_text(f) for f in program.functions]
    lines += [statement_text(s) for s in program.statements]
    return "\n".join(lines) + "\n"
