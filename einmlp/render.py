"""Plain-text rendering of index expressions, the way the article writes them."""

from __future__ import annotations

import sympy as sp
from sympy.printing.str import StrPrinter


class _IndexPrinter(StrPrinter):
    """Einstein notation: `X[i,j]`, sums implicit, deltas as delta(i,m), pieces by name."""

    printmethod = "_einmlp_str"  # bypass sympy's own `_sympystr` of Indexed

    def _print_Indexed(self, expr):
        return f"{expr.base.label}[{','.join(self._print(i) for i in expr.indices)}]"

    def _print_KroneckerDelta(self, expr):
        return f"delta({self._print(expr.args[0])},{self._print(expr.args[1])})"

    def _print_ESum(self, expr):
        return self._print(expr.body)

    def _print_Extent(self, expr):
        return f"N_{expr.label}"

    def _print_Partial(self, expr):
        of = self._print(expr.args[0])
        return f"d{'(' + of + ')' if '/' in of else of}/d{self._print(expr.args[1])}"

    def _print_Function(self, expr):
        from .functions import UserFunction
        if isinstance(expr, UserFunction):  # sympy dispatches subclasses of Function here
            return f"{expr.label()}({self._print(expr.args[0])})"
        return super()._print_Function(expr)

    def _print_Leaf(self, expr):
        return expr.name + (".T" if expr.transposed else "") + ("[:, None]" if expr.column else "")


def index_str(expr: sp.Expr) -> str:
    """One-line text of an index expression with implicit (Einstein) sums."""
    from .symbolic import ESum
    implicit = expr.replace(lambda e: isinstance(e, ESum), lambda e: e.body)
    return _IndexPrinter({"order": "none"}).doprint(implicit)
