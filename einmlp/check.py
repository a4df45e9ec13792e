"""Finite-difference verification of a derivation: nothing it computes is shared with it.

Central differences entry by entry for small tensors, and along random directions for
large ones (one pair of forward evaluations per direction, any size).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import EinmlpError, ShapeError


@dataclass(frozen=True, slots=True)
class CheckResult:
    max_rel_error: float  # worst error beyond the noise floor, relative to the derivative's size: the verdict's
    ok: bool              # max_rel_error <= tolerance
    tolerance: float
    compared: int         # entries or directions compared
    mode: str             # "entrywise" or "directions"
    raw_error: float = 0.0    # worst |numeric - derived| relative to the derivative's size, before any allowance
    noise_floor: float = 0.0  # the rounding finite differences carry at this step, on the same scale

    def __bool__(self) -> bool:
        return self.ok

    @property
    def _what(self) -> str:
        return f"{self.compared} {'entries' if self.mode == 'entrywise' else 'random directions'}"

    def __str__(self) -> str:
        if self.max_rel_error != self.max_rel_error:  # nan
            return ("FAILED: the derivative or the function is not finite (nan or inf) at these arrays, "
                    "so nothing can be compared")
        verdict = "ok" if self.ok else "FAILED"
        if self.max_rel_error == 0:
            beyond = f"within the finite-difference noise floor {self.noise_floor:.2g}"
        else:
            beyond = f"{self.max_rel_error:.3g} beyond the finite-difference noise floor {self.noise_floor:.2g}"
        return (f"{verdict}: max relative error {self.raw_error:.3g}, {beyond} "
                f"(tolerance {self.tolerance:g} beyond it; {self._what})")

    def _repr_html_(self) -> str:
        verdict = "ok" if self.ok else "<b style='color:#b00'>FAILED</b>"
        rows = [("verdict", verdict), ("max relative error", f"{self.raw_error:.3g}"),
                ("noise floor of finite differences", f"{self.noise_floor:.3g}"),
                ("error beyond the floor", f"{self.max_rel_error:.3g}"), ("tolerance", f"{self.tolerance:g}"),
                ("compared", self._what)]
        return "<table>" + "".join(f"<tr><th style='text-align:left'>{k}</th><td>{v}</td></tr>"
                                   for k, v in rows) + "</table>"


def _differences(function, arrays: dict, wrt: str, probes: list, h: float) -> tuple[np.ndarray, float]:
    """Central differences along each probe, and the rounding they carry from f's values."""
    w, numeric, noise = arrays[wrt], [], 0.0
    for v in probes:
        plus = np.asarray(function(**{**arrays, wrt: w + h * v}), dtype=float)
        minus = np.asarray(function(**{**arrays, wrt: w - h * v}), dtype=float)
        numeric.append((plus - minus) / (2 * h))
        noise = max(noise, 64 * np.finfo(float).eps * float(np.max(np.abs(plus), initial=0)) / h)
    return np.array(numeric), noise


def _relative(numeric: np.ndarray, exact: np.ndarray, noise: float) -> tuple[float, float]:
    """The worst difference and the rounding noise, both relative to the derivative's size."""
    scale = max(float(np.max(np.abs(numeric), initial=0)), float(np.max(np.abs(exact), initial=0)), 1e-300)
    return float(np.max(np.abs(numeric - exact), initial=0)) / scale, noise / scale


def check(derivation, arrays: dict, *, tolerance: float = 1e-6, directions: int = 6,
          entrywise_limit: int = 64, seed: int = 0, functions: dict | None = None) -> CheckResult:
    """Compare `derivation.compile()` with central differences of the function it differentiates.

    Examples:
        >>> import einmlp, numpy as np
        >>> prog = einmlp.parse("L = x[i] x[i]")
        >>> einmlp.check(prog.grad("x"), {"x": np.arange(3.0)}).ok
        True
    """
    try:
        arrays = {k: np.array(v, dtype=float) for k, v in arrays.items()}
    except (TypeError, ValueError) as exc:
        raise ShapeError(f"check needs numeric arrays: {exc}") from None
    wrts = derivation.wrt if isinstance(derivation.wrt, tuple) else (derivation.wrt,)
    for wrt in wrts:
        if wrt not in arrays:
            raise EinmlpError(f"check needs an array for {wrt}")
    function = derivation.differentiated(functions=functions)
    derived = derivation.compile(functions=functions)(**arrays)
    worst, worst_raw, worst_floor, compared, mode = 0.0, 0.0, 0.0, 0, "entrywise"
    rng = np.random.default_rng(seed)
    for wrt in wrts:
        grad = derived[wrt] if isinstance(derived, dict) else derived
        w = arrays[wrt]
        h = 6e-6 * max(1.0, float(np.max(np.abs(w))) if w.size else 1.0)
        if w.size <= entrywise_limit:
            probes = [np.eye(1, w.size, k).reshape(w.shape) for k in range(w.size)]
        else:
            mode = "directions"
            probes = [rng.standard_normal(w.shape) for _ in range(directions)]
        numeric, noise = _differences(function, arrays, wrt, probes, h)
        exact = np.array([np.tensordot(grad, v, axes=v.ndim) if v.ndim else grad * v for v in probes])
        if not (np.all(np.isfinite(numeric)) and np.all(np.isfinite(exact))):
            return CheckResult(float("nan"), False, tolerance, compared + len(probes), mode, float("nan"),
                               float("nan"))
        raw, floor = _relative(numeric, exact, noise)
        if raw - floor > tolerance:  # rounding inside f (a sum that cancels): differences that grow as h shrinks
            wider, _ = _differences(function, arrays, wrt, probes, 4 * h)
            raw, floor = _relative(numeric, exact, max(noise, 2 * float(np.max(np.abs(numeric - wider)))))
        worst, worst_raw = max(worst, max(raw - floor, 0.0)), max(worst_raw, raw)
        worst_floor = max(worst_floor, floor)
        compared += len(probes)
    return CheckResult(worst, bool(worst <= tolerance), tolerance, compared, mode, worst_raw, worst_floor)
