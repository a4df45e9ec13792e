"""The elementwise functions: one table row each, with sympy form, numpy form and derivative.

A reviewer checks calculus here, not control flow: `tests/test_functions.py` confirms
each row's derivative against sympy's own differentiation and finite differences.
`relu'(0)` is taken as 0 (the subgradient most frameworks use); `abs'(0)` is `sign(0) = 0`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Callable

import sympy as sp

from .errors import EinmlpError

_x = sp.Symbol("_x", real=True)  # a user name never starts with _, so no scalar of a program is this


class _Real(sp.Function):
    """An elementwise function that is real on real arguments (so |f|' is sign(f) f', not re/im)."""

    nargs = 1

    def _eval_is_extended_real(self):
        return self.args[0].is_extended_real


class sign(sp.sign):
    """sign(x) of a real value: its derivative is 2 DiracDelta(x) x' for every argument.

    sympy's own leaves the derivative unevaluated where it cannot prove the argument real
    (sign(log|a|^2 + 1)), and nothing can compute that.
    """

    def _eval_derivative(self, s):
        return 2 * sp.DiracDelta(self.args[0]) * self.args[0].diff(s)


class Abs(sp.Abs):
    """|x| with derivative sign(x) x' for every argument: the language's values are real.

    sympy's own falls back to re/im/atan2 when it cannot prove an argument such as sqrt(x)
    real; named Abs so sympy's printers treat it as |x|.
    """

    def _eval_derivative(self, s):
        return sign(self.args[0]) * self.args[0].diff(s)


class tanh(sp.tanh):
    """tanh that evaluates numbers only.

    sympy's own also rewrites its argument (a minus sign out, multiples of i*pi, atanh),
    and deciding those asks the assumption system about a sum of sums and products: about
    half a millisecond per tanh made, a tenth of a 64-layer network's derive.
    """

    @classmethod
    def eval(cls, arg):  # safe: sympy's hook that evaluates a function of a sympy number, not Python's eval
        return super().eval(arg) if arg.is_Number else None

    def fdiff(self, argindex=1):
        return 1 - type(self)(self.args[0]) ** 2


class sigmoid(_Real):
    """The logistic function 1 / (1 + exp(-x))."""

    nargs = 1

    def fdiff(self, argindex=1):
        return self * (1 - self)


class sigmoid_slope(_Real):
    """sigmoid(x) (1 - sigmoid(x)), as compiled code computes it: e / (1 + e)^2 with e = exp(-|x|).

    Lowering writes it for the product (never a name of the language): one stable call where
    sigmoid, 1 - s and the product took seven passes, and no 1 - s that rounds to 0 near s = 1.
    """

    nargs = 1


class step(_Real):
    """Heaviside step with step(0) = 0: the derivative of relu."""

    nargs = 1

    def fdiff(self, argindex=1):
        return sp.S.Zero


class relu(_Real):
    """max(x, 0)."""

    nargs = 1

    def fdiff(self, argindex=1):
        return step(self.args[0])


class softplus(_Real):
    """log(1 + exp(x)), computed stably."""

    nargs = 1

    def fdiff(self, argindex=1):
        return sigmoid(self.args[0])


@dataclass(frozen=True, slots=True)
class Builtin:
    name: str                          # the name in the language
    sympy: Callable[[sp.Expr], sp.Expr]  # builds the sympy form
    numpy: str                         # numpy source, {x} is the argument
    derivative: Callable[[sp.Expr], sp.Expr]  # d/dx, as the derivation shows it


BUILTINS: dict[str, Builtin] = {b.name: b for b in [
    Builtin("exp", sp.exp, "np.exp({x})", sp.exp),
    Builtin("log", sp.log, "np.log({x})", lambda x: 1 / x),
    Builtin("tanh", tanh, "np.tanh({x})", lambda x: 1 - tanh(x) ** 2),
    Builtin("sigmoid", sigmoid, "_sigmoid({x})", lambda x: sigmoid(x) * (1 - sigmoid(x))),
    Builtin("relu", relu, "np.maximum({x}, 0.0)", step),
    Builtin("softplus", softplus, "_softplus({x})", sigmoid),
    Builtin("sqrt", sp.sqrt, "np.sqrt({x})", lambda x: 1 / (2 * sp.sqrt(x))),
    Builtin("abs", Abs, "np.abs({x})", sign),
    Builtin("sin", sp.sin, "np.sin({x})", sp.cos),
    Builtin("cos", sp.cos, "np.cos({x})", lambda x: -sp.sin(x)),
]}

def near_builtin(name: str) -> str | None:
    """The built-in a misspelled name most likely meant (sigmod -> sigmoid), if any is close."""
    near = difflib.get_close_matches(name, BUILTINS, n=1, cutoff=0.75)
    return near[0] if near else None


# Functions that only derivatives produce: sympy name -> numpy source. sign' is 2 DiracDelta,
# taken as 0 as relu'' is (the kink itself has measure zero).
DERIVED_NUMPY = {"step": "np.heaviside({x}, 0.0)", "sign": "np.sign({x})", "DiracDelta": "0.0*({x})",
                 "sigmoid_slope": "_dsigmoid({x})"}


# sympy class name -> numpy source (sqrt is a power in sympy, printed as np.sqrt elsewhere)
_NUMPY_BY_SYMPY_NAME = {b.sympy(_x).func.__name__: b.numpy for b in BUILTINS.values() if b.name != "sqrt"}
_NUMPY_BY_SYMPY_NAME.update(DERIVED_NUMPY)


class UserFunction(_Real):
    """A function of the program: defined by `f(x) = ...` or abstract; shown as f, f', f''.

    The class name is einmlp's own (`_user_f_1`), so a user function called `Add` or
    `Indexed` cannot take over sympy's printers; `label` is the name shown to the user.
    """

    nargs = 1
    root: str = ""
    order: int = 0
    definition: sp.Expr | None = None  # the body in `_x`, differentiated `order` times
    _prime: type | None = None

    @classmethod
    def label(cls) -> str:
        """The name as the user reads it: f, f', f''."""
        return cls.root + "'" * cls.order

    def _sympystr(self, printer):
        return f"{self.label()}({printer._print(self.args[0])})"

    def fdiff(self, argindex=1):
        return type(self).prime()(self.args[0])

    @classmethod
    def prime(cls) -> type:
        """The class of this function's derivative, made once."""
        if cls._prime is None:
            body = None if cls.definition is None else sp.diff(cls.definition, _x)
            cls._prime = make_user_function(cls.root, body, cls.order + 1)
        return cls._prime


def make_user_function(root: str, definition: sp.Expr | None, order: int = 0) -> type:
    """The sympy class of a program's function (or of its `order`-th derivative)."""
    return type(f"_user_{root}_{order}", (UserFunction,),
                {"root": root, "order": order, "definition": definition, "_prime": None})


@dataclass(slots=True)
class FunctionTable:
    """Name -> sympy function class for one program: built-ins plus its own definitions."""

    user: dict[str, type] = field(default_factory=dict)

    def define(self, name: str, body: sp.Expr | None) -> type:
        self.user[name] = make_user_function(name, body)
        return self.user[name]

    def apply(self, name: str, arg: sp.Expr) -> sp.Expr:
        if name in BUILTINS:
            return BUILTINS[name].sympy(arg)
        if name not in self.user:
            self.define(name, None)
        return self.user[name](arg)



def numpy_source(func: sp.Expr, arg_source: str) -> str:
    """Numpy source for one applied elementwise function; user functions are inlined elsewhere."""
    name = type(func).__name__
    if name in _NUMPY_BY_SYMPY_NAME:
        return _NUMPY_BY_SYMPY_NAME[name].format(x=arg_source)
    raise EinmlpError(f"no numpy form for function {name!r}")


PARAM = _x
