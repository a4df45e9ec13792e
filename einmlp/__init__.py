"""einmlp: neural-network gradients in Einstein index notation.

Derived symbolically, shown step by step, and compiled to fast einsum code.
"""

from .api import Compiled, Derivation, Gradients, Program, load, parse
from .check import CheckResult, check
from .errors import (EinmlpError, EinmlpWarning, IndexNotationError, NumericError, ParseError, ShapeError,
                     UnknownNameError)
from .testing import assert_gradient
from .training import TrainResult, ValueAndGrad, train

__version__ = "0.1.0"

__all__ = ["parse", "load", "check", "train", "assert_gradient",
           "Program", "Derivation", "Gradients", "Compiled", "CheckResult", "ValueAndGrad", "TrainResult",
           "EinmlpError", "ParseError", "IndexNotationError", "ShapeError", "UnknownNameError", "NumericError",
           "EinmlpWarning",
           "__version__"]
