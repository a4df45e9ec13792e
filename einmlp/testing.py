"""A pytest helper: check a hand-written gradient against the one einmlp derives.

A learner's backprop code is usually right up to one slip (a sign, a missing factor, a
transpose); the failure message lists the worst entries and names such a slip where it sees one.
"""

from __future__ import annotations

import inspect

import numpy as np

from .errors import EinmlpError, ShapeError

WORST = 5  # entries listed in a failure message


def _call(fn, arrays: dict):
    """fn(**arrays), passing only the arrays that fn names as parameters (all of them to **kwargs)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin or C function: no signature to read
        return fn(**arrays)
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return fn(**arrays)
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    missing = [p.name for p in params if p.name in named and p.name not in arrays and p.default is p.empty]
    if missing:
        raise EinmlpError(f"{getattr(fn, '__name__', 'the function')} takes {', '.join(missing)}, which "
                          f"{'is' if len(missing) == 1 else 'are'} not among the arrays ({', '.join(arrays)})")
    return fn(**{k: v for k, v in arrays.items() if k in named})


def _by_name(result, wrt: tuple[str, ...], fn) -> dict:
    """The hand-written gradients by name: one array for one name, a dict or a sequence for several."""
    if len(wrt) == 1 and not isinstance(result, dict):
        return {wrt[0]: result}
    if isinstance(result, dict):
        missing = [w for w in wrt if w not in result]
        if missing:
            raise EinmlpError(f"{getattr(fn, '__name__', 'the function')} returned no gradient for "
                              f"{', '.join(missing)} (it returned {', '.join(map(str, result))})")
        return {w: result[w] for w in wrt}
    if isinstance(result, (tuple, list)) and len(result) == len(wrt):
        return dict(zip(wrt, result))
    raise EinmlpError(f"for several names, {getattr(fn, '__name__', 'the function')} must return a dict "
                      f"{{name: gradient}} or one gradient per name in the order {', '.join(wrt)}")


def _slip(hand: np.ndarray, expected: np.ndarray, rtol: float, atol: float, target: str) -> str:
    """A common slip that explains the difference exactly, or ''."""
    if expected.ndim == 2 and hand.shape == expected.shape[::-1] and np.allclose(hand.T, expected, rtol, atol):
        return f"it is the transpose of {target}"
    if hand.shape != expected.shape:
        return ""
    norm = float(np.vdot(expected, expected))
    if norm == 0 or not np.all(np.isfinite(hand)):
        return ""
    c = float(np.vdot(hand, expected)) / norm
    if np.allclose(hand, c * expected, rtol, atol):
        if np.isclose(c, -1) and target.startswith("-"):
            return f"it is {target[1:]}, the gradient itself: pass sign=1"
        if np.isclose(c, -1):
            return f"it is -{target}: pass sign=-1 if it is meant as the descent direction"
        return f"it is {c:.6g} times {target}: a constant factor is missing or extra"
    return ""


def _report(name: str, label: str, hand: np.ndarray, expected: np.ndarray, rtol: float, atol: float,
            sign: float, derivation) -> str | None:
    """The failure message for one gradient, or None when it agrees; `derivation()` is derived only to show it."""
    target = f"{'-' if sign < 0 else ''}{label}"
    if hand.shape != expected.shape:
        slip = _slip(hand, expected, rtol, atol, target)
        return (f"{name}: the hand-written gradient is shaped {hand.shape}, but {target} is shaped "
                f"{expected.shape} (like {name})" + (f"; {slip}" if slip else "")
                + f"\n  derived: {label} = {derivation().matrix_form}")
    error = np.abs(hand - expected)
    bad = ~(error <= atol + rtol * np.abs(expected))  # nan counts as a difference
    if not bad.any():
        return None
    rel = error / np.maximum(np.abs(expected), np.finfo(float).tiny)
    order = np.argsort(np.where(bad, np.nan_to_num(error, nan=np.inf), -1.0), axis=None)[::-1][:WORST]
    rows = []
    for flat in order:
        if not bad.flat[flat]:
            break
        where = ",".join(map(str, np.unravel_index(flat, hand.shape))) if hand.ndim else ""
        rows.append(f"    {name}[{where}]".ljust(18) + f"{hand.flat[flat]:>16.8g}{expected.flat[flat]:>16.8g}"
                    f"{error.flat[flat]:>14.3g}")
    lines = [f"{name}: the hand-written gradient differs from {target} in {int(bad.sum())} of {bad.size} "
             f"entries: max abs error {np.nanmax(np.where(bad, error, 0)):.3g}, "
             f"max rel error {np.nanmax(np.where(bad, rel, 0)):.3g} (rtol {rtol:g}, atol {atol:.3g})",
             "    entry".ljust(18) + "hand-written".rjust(16) + target[-15:].rjust(16) + "abs error".rjust(14), *rows]
    slip = _slip(hand, expected, rtol, atol, target)
    if slip:
        lines.append(f"  {slip}")
    shown = derivation()
    lines.append(f"  derived: {label} = {shown.matrix_form}")
    lines.append(f"           {label}[{','.join(map(str, shown.free))}] = {shown.index_form}")
    if sign < 0:
        lines.append(f"  (sign=-1: the hand-written function should return -{label}, the descent direction)")
    return "\n".join(lines)


def assert_gradient(fn, prog, wrt, arrays: dict, of: str | None = None, *, sign: float = 1, rtol: float = 1e-6,
                    atol: float | None = None, functions: dict | None = None) -> None:
    """Assert that a hand-written gradient agrees with the gradient einmlp derives, for pytest.

    `fn` is called with the arrays it names as parameters (all of them if it takes **kwargs)
    and returns the gradient with respect to `wrt`, or for a list of names a dict or one array
    per name. `sign=-1` accepts the descent direction `-d of/d wrt`, as the article's `deltaW1`.
    Entries agree when |hand - sign * derived| <= atol + rtol |sign * derived|; `atol` defaults
    to 1e-9 times the largest derived entry. On failure the AssertionError lists the worst
    entries with their indices and shows the derived matrix and index forms.

    Examples:
        >>> prog = einmlp.parse("L = x[i] A[i,j] x[j]")
        >>> einmlp.assert_gradient(lambda A, x: (A + A.T) @ x, prog, "x", {"A": np.eye(2), "x": np.ones(2)})
        >>> einmlp.assert_gradient(lambda A, x: A @ x, prog, "x", {"A": np.diag([1.0, 2.0]), "x": np.ones(2)})
        Traceback (most recent call last):
        AssertionError: x: the hand-written gradient differs from dL/dx in 2 of 2 entries: ...
    """
    from .api import Program, parse
    if isinstance(prog, str):
        prog = parse(prog)
    if not isinstance(prog, Program):
        raise EinmlpError(f"assert_gradient needs an einmlp Program (or its source text), not {type(prog).__name__}")
    if sign not in (1, -1):
        raise EinmlpError(f"sign must be 1 (the gradient) or -1 (the descent direction), not {sign!r}")
    names = (wrt,) if isinstance(wrt, str) else tuple(wrt)
    grads = prog.grad(list(names), of=of)
    derived = grads.compile(functions)(**arrays)
    hand = _by_name(_call(fn, arrays), names, fn)
    failures = []
    for name in names:
        try:
            mine = np.asarray(hand[name], dtype=float)
        except (TypeError, ValueError):
            raise ShapeError(f"the hand-written gradient for {name} is not an array of numbers") from None
        expected = sign * np.asarray(derived[name], dtype=float)
        scale = float(np.max(np.abs(expected), initial=0.0))
        tol = atol if atol is not None else 1e-9 * scale if scale > 0 else 1e-12
        report = _report(name, f"d{grads.of}/d{name}", mine, expected, rtol, tol, sign,
                         lambda name=name: grads[name])
        if report:
            failures.append(report)
    if failures:
        raise AssertionError("\n".join(failures))
