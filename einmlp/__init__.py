"""einmlp: neural-network gradients in Einstein index notation.

Derived symbolically, shown step by step, and compiled to fast einsum code.
"""

from .api import Compiled, Derivation, Gradients, Program, load, parse
from .check import CheckResult, check
from .errors import (EinmlpError, EinmlpWarning, IndexNotationError, NumericError, ParseError, ShapeError,
                     UnknownNameError)

__version__ = "0.1.0"

__all__ = ["parse", "load", "check", "Program", "Derivation", "Gradients", "Compiled", "CheckResult",
           "EinmlpError", "ParseError", "IndexNotationError", "ShapeError", "UnknownNameError", "NumericError",
           "EinmlpWarning",
           "__version__"]
