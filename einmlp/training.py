"""Training by gradient descent on a program's own derived gradients.

`Program.value_and_grad` compiles the loss and its gradients into one plan, so each step
runs the forward pass once; `train` applies plain, momentum or Adam updates to copies of
the arrays. Nothing here differentiates: every gradient comes from the derivation.
"""

from __future__ import annotations

import html
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import EinmlpError, EinmlpWarning, UnknownNameError, guarded
from . import backends
from .compiled import Compiled

METHODS = ("sgd", "momentum", "adam")
VALUE = ""  # the key of the loss among the plan's outputs: no program name is empty


class ValueAndGrad:
    """The value of `of` and its gradients with respect to `wrt`, from one shared plan.

    Examples:
        >>> prog = einmlp.parse("L = (w[i] - 1)^2")
        >>> loss, grads = prog.value_and_grad(["w"]).compile()(w=np.zeros(2))
        >>> float(loss), grads["w"].tolist()
        (2.0, [-2.0, -2.0])
    """

    @guarded
    def __init__(self, program, of: str, wrt: tuple[str, ...]):
        from .api import Gradients
        self.program, self.of, self.wrt = program, of, wrt
        self.gradients = Gradients(program, of, wrt)  # validates wrt and shares the program's adjoints

    @property
    def plan(self):
        """The gradients' plan with the value of `of` as one more output: its forward work is already there."""
        cache = self.__dict__
        if "_plan" not in cache:
            cache["_plan"] = self.gradients.plan_with_value(VALUE)
        return cache["_plan"]

    @guarded
    def compile(self, functions: dict | None = None, backend: str | None = None) -> Callable:
        """`vg(**arrays) -> (value, {name: gradient})`, one pass over the program (backends: see Program.compile)."""
        fn = Compiled(self.gradients.backprop.model, self.plan, "value_and_grad_" + self.of, functions,
                      checks=(self.of, *self.wrt), backend=backend)

        def value_and_grad(*args, **arrays):
            results = fn(*args, **arrays)
            value = results.pop(VALUE)
            return value, results
        value_and_grad.compiled = fn  # the plan, its source and its inputs, for whoever wants to look
        return value_and_grad

    def __repr__(self) -> str:
        return f"<ValueAndGrad {self.of} and d{self.of}/d({', '.join(self.wrt)})>"


class _Optimizer:
    """One update rule; `step` returns the new value of one array from its gradient."""

    def __init__(self, method: str, lr: float, momentum: float, betas: tuple[float, float], eps: float):
        self.method, self.lr, self.momentum, self.betas, self.eps = method, lr, momentum, betas, eps
        self.state: dict[str, list] = {}

    def step(self, name: str, value: np.ndarray, grad: np.ndarray, t: int) -> np.ndarray:
        """The updated `value` at step `t` (counted from 1)."""
        if self.method == "sgd":
            return value - self.lr * grad
        if self.method == "momentum":  # heavy ball: v <- beta v + g; w <- w - lr v
            velocity = self.state.setdefault(name, [0 * value])  # 0 * value: zeros of any array library
            velocity[0] = self.momentum * velocity[0] + grad
            return value - self.lr * velocity[0]
        b1, b2 = self.betas  # Adam (Kingma and Ba), with bias correction
        m, v = self.state.setdefault(name, [0 * value, 0 * value])
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad * grad
        self.state[name] = [m, v]
        m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        return value - self.lr * m_hat / (v_hat ** 0.5 + self.eps)


@dataclass(frozen=True)
class TrainResult:
    arrays: dict           # every array, the trained ones updated (copies: the caller's are untouched)
    losses: np.ndarray     # the loss before each step's update, one per step taken
    loss: float            # the loss after the last update (nan if training diverged)
    of: str
    wrt: tuple[str, ...]
    method: str
    lr: float
    diverged: bool         # the loss stopped being finite; `losses` ends at that step

    @property
    def steps(self) -> int:
        return len(self.losses)

    def __repr__(self) -> str:
        start = f"{self.losses[0]:.6g}" if len(self.losses) else "?"
        end = "diverged" if self.diverged else f"{self.loss:.6g}"
        return (f"<TrainResult {self.of}: {start} -> {end} after {self.steps} steps of {self.method} "
                f"(lr {self.lr:g}) on {', '.join(self.wrt)}>")

    def plot(self, path=None):
        """The loss per step as a matplotlib Figure (log scale where positive); saved to `path` if given."""
        fig = _figure(path)
        ax = fig.subplots()
        ax.plot(np.arange(1, self.steps + 1), self.losses, color="steelblue")
        if len(self.losses) and np.all(self.losses > 0):
            ax.set_yscale("log")
        ax.set(xlabel="step", ylabel=self.of, title=f"{self.of}: {self.method}, lr {self.lr:g}")
        ax.grid(True, alpha=0.3)
        if path is not None:
            try:
                fig.savefig(path, dpi=100)
            except OSError as exc:
                raise EinmlpError(f"cannot write {path}: {exc.strerror}") from None
        return fig

    def _repr_html_(self) -> str:
        rows = [("loss", html.escape(self.of)), ("trained", html.escape(", ".join(self.wrt))),
                ("method", f"{self.method}, lr {self.lr:g}"), ("steps", str(self.steps)),
                ("first loss", f"{self.losses[0]:.6g}" if len(self.losses) else "?"),
                ("final loss", "diverged (try a smaller lr)" if self.diverged else f"{self.loss:.6g}")]
        table = "".join(f"<tr><th style='text-align:left'>{k}</th><td>{v}</td></tr>" for k, v in rows)
        return f"<table>{table}</table>{_sparkline(self.losses)}"


def _figure(path=None):
    """A new matplotlib Figure (no pyplot state); a clear error when matplotlib or the file type is missing."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise EinmlpError("plotting needs matplotlib: pip install 'einmlp[plot]'") from None
    fig = Figure(figsize=(6, 4), layout="constrained")
    if path is not None:
        kind = Path(path).suffix.lstrip(".").lower()
        formats = fig.canvas.get_supported_filetypes()
        if kind not in formats:
            raise EinmlpError(f"cannot plot to {path}: name it .png, .pdf or .svg "
                              f"(supported: {', '.join(sorted(formats))})")
    return fig


def check_plot(path) -> None:
    """Fail before training, not after it, when the loss plot cannot be made."""
    _figure(path)


def _sparkline(losses: np.ndarray, width: int = 240, height: int = 48) -> str:
    """The loss curve as a small inline SVG (log scale where the losses are positive); no plotting library."""
    values = np.asarray(losses, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) < 2:
        return ""
    if np.all(values > 0):
        values = np.log10(values)
    low, high = float(values.min()), float(values.max())
    span = high - low or 1.0
    xs = np.linspace(0, width, len(values))
    ys = height - (values - low) / span * height
    points = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys))
    return (f"<svg width='{width}' height='{height}' style='overflow:visible'>"
            f"<polyline fill='none' stroke='steelblue' points='{points}'/></svg>")


def _validate(program, arrays: dict, wrt, of, lr, steps, method: str) -> tuple[tuple[str, ...], str]:
    if method not in METHODS:
        raise EinmlpError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr > 0):
        raise EinmlpError(f"lr must be a positive number, not {lr!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise EinmlpError(f"steps must be a whole number of at least 1, not {steps!r}")
    wrt = (wrt,) if isinstance(wrt, str) else tuple(wrt)
    unknown = [w for w in wrt if w not in program.model.inputs]
    if unknown or not wrt:
        raise UnknownNameError(f"train needs inputs of the program to train, got {', '.join(unknown) or 'none'} "
                               f"(inputs: {', '.join(program.inputs)})")
    of = program._of(of)
    if program.model.definitions[of].indices:
        raise EinmlpError(f"train minimises a scalar loss, and {of} is a tensor: name a scalar target as `of` "
                          "(--of on the command line)")
    for name in wrt:
        if name not in arrays:
            raise UnknownNameError(f"train needs a starting array for {name}")
    return wrt, of


@guarded
def train(program, arrays: dict, wrt, lr: float = 0.01, steps: int = 100, of: str | None = None,
          method: str = "sgd", *, momentum: float = 0.9, betas: tuple[float, float] = (0.9, 0.999),
          eps: float = 1e-8, functions: dict | None = None,
          callback: Callable[[int, float], None] | None = None, backend: str | None = None) -> TrainResult:
    """Minimise the scalar `of` over the arrays named in `wrt`, by its derived gradients.

    Each step computes the loss and every gradient in one pass, then updates copies of the
    `wrt` arrays by `method`: "sgd" (w -= lr g), "momentum" (heavy ball, `momentum`) or
    "adam" (`betas`, `eps`). `callback(step, loss)` is called once per step. A loss that
    stops being finite ends training early with `diverged=True` and a warning. The arrays
    stay in their library (numpy, torch, jax): `backend` as in `Program.compile`
    ("numba" fuses numpy's elementwise work; "torch" or "jax" trains numpy arrays there).

    Examples:
        >>> prog = einmlp.parse("L = (w[i] - 1)^2")
        >>> fit = einmlp.train(prog, {"w": np.zeros(2)}, wrt="w", lr=0.1, steps=50)
        >>> fit.arrays["w"].round(3).tolist(), float(fit.losses[0])
        ([1.0, 1.0], 2.0)
    """
    wrt, of = _validate(program, arrays, wrt, of, lr, steps, method)
    vg = program.value_and_grad(list(wrt), of=of).compile(functions, backend=backend)
    library = backends.named(backend) if backend else backends.of(arrays.values())
    if library.name in ("numpy", "numba"):
        current = {name: np.array(value, copy=True) for name, value in arrays.items()}
    else:  # updates make new arrays, so the caller's are untouched
        current = {name: library.asarray(name, value) for name, value in arrays.items()}
    optimizer = _Optimizer(method, float(lr), momentum, betas, eps)
    losses, diverged = [], False
    with np.errstate(all="ignore"):  # a diverging run is reported below, not by numpy's overflow warnings
        for step in range(steps):
            value, grads = vg(**current)
            loss = float(value)
            # 0 * g sums to nan exactly where g has an inf or a nan, in any array library
            if not (math.isfinite(loss) and all(math.isfinite(float((g * 0).sum())) for g in grads.values())):
                diverged = True
                break
            losses.append(loss)
            if callback is not None:
                callback(step, loss)
            for name in wrt:
                current[name] = optimizer.step(name, current[name], grads[name], step + 1)
        final = float("nan") if diverged else float(program.compile(of, functions, backend=backend)(**current))
    if diverged or not math.isfinite(final):
        diverged = True
        warnings.warn(f"training diverged after {len(losses)} steps: the loss or a gradient is not finite; "
                      "try a smaller lr", EinmlpWarning, stacklevel=3)
    elif final > losses[0]:
        warnings.warn(f"the loss went up, from {losses[0]:.6g} to {final:.6g}: try a smaller lr",
                      EinmlpWarning, stacklevel=3)
    return TrainResult(current, np.array(losses), final, of, wrt, method, float(lr), diverged)
