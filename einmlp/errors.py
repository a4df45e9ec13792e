"""One error family for everything einmlp refuses, each message naming the user's symbol."""

from __future__ import annotations

import functools


class EinmlpError(Exception):
    """Base class of every error einmlp raises on bad input."""


class EinmlpWarning(UserWarning):
    """Input einmlp accepts but that may not mean what was meant (`sigmod` near `sigmoid`)."""


class ParseError(EinmlpError):
    """Text that is not in the language; carries line, column and a caret rendering."""

    def __init__(self, message: str, line: int = 0, column: int = 0, source_line: str = ""):
        self.message, self.line, self.column, self.source_line = message, line, column, source_line
        super().__init__(self._render())

    def _render(self) -> str:
        if not self.line:
            return self.message
        where = f"line {self.line}, column {self.column}: {self.message}"
        if not self.source_line:
            return where
        return f"{where}\n    {self.source_line}\n    {' ' * (self.column - 1)}^"


class IndexNotationError(EinmlpError):
    """Bad or ambiguous Einstein summation, found before any array is seen."""


class UnknownNameError(EinmlpError):
    """A tensor, target or function name that the program does not define."""


class ShapeError(EinmlpError):
    """Arrays whose shapes disagree with the index notation."""



class NumericError(EinmlpError):
    """A constant that is not a finite float: division by zero, or a value too large."""


def guarded(method):
    """Public entry points: a RecursionError from very deep input becomes a clear EinmlpError."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except RecursionError:
            raise EinmlpError("the program is nested too deeply for einmlp to work on; "
                              "split long chains of statements or expressions into fewer, flatter ones") from None
    return wrapper
