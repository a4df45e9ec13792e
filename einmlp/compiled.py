"""`Compiled`: a plan's function, bound to its inputs' names, shapes and array library.

Everything that depends on a call's signature (its backend, shapes, float type and
device) is settled once per signature: the shape check, the float type, and the
function built for that backend. A call with a signature seen before only binds its
arguments and runs the arithmetic.
"""

from __future__ import annotations

import difflib
import functools
import operator
import time

import numpy as np

from . import backends, blas, fusion, jitplan
from . import shapes as shape_stage
from .codegen import check_functions, compile_plan, python_source
from .errors import EinmlpError, ShapeError, UnknownNameError
from .lower import EinsumPlan
from .rows import PARTIAL, ROWS
from .symbolic import Model


WHOLE_AFTER = 0.5  # seconds a small float64 signature spends in numpy calls before it is compiled whole
BLOCK_FROM = 1 << 18  # input elements from which a plan that separates over its rows runs on blocks of them
BLOCK_ELEMENTS = 1 << 16  # elements of the cut inputs in one block (measured: benchmarks/compare.py)
BLOCK_MIN_ROWS = 1024  # fewer rows to a block and the per-block calls cost more than the cache saves


def _shape(value) -> tuple:
    return tuple(value.shape) if hasattr(value, "shape") else np.shape(value)


class Compiled:
    """A compiled function: `fn(**arrays)` or `fn(*arrays)` in the order of its repr.

    It computes with the library of the arrays it is given (numpy, torch, jax, dask or
    cupy) and returns that library's arrays in their float type; `backend=` pins one, and
    arrays of another library are converted to it. On numpy arrays of `fusion.FUSE_FROM`
    elements or more (`backend="numba"` always, `backend="numpy"` never), elementwise
    expressions run as fused kernels where numba is installed, and large matrix products on
    MKL where it is installed and measures faster (blas.py); on fewer float64 elements, a
    signature that has run `WHOLE_AFTER` seconds is compiled as one numba function, used if
    it agrees with numpy and is faster (`whole_refused` says why not). From `BLOCK_FROM`
    elements, a plan that separates over its rows (rows.py) runs on numpy arrays in blocks
    of rows. Shapes are checked once per shape signature, for every statement the result
    depends on.
    """

    def __init__(self, model: Model, plan: EinsumPlan, name: str, functions: dict | None = None,
                 checks: tuple[str, ...] = (), backend: str | None = None):
        self.model, self.plan, self.name = model, plan, name
        self.backend = None if backend is None else backends.named(backend)
        self._functions = check_functions(plan, functions)
        self._make = compile_plan(plan)
        self._rewritten: dict[str, object] = {}  # backend name -> its version of the plan (Backend.rewrite)
        self._needed = tuple(plan.variables)
        self._checks = checks  # statements to check as well when their inputs are given (the `of`)
        self._signatures: dict[tuple, tuple] = {}  # call signature -> (float type, function)
        self._functions_for: dict[tuple, object] = {}  # (backend, float type, device, fused) -> function
        # calls seen before: (keyword names, argument types, signatures) -> the function that runs them
        self._seen: dict[tuple, object] = {}
        self._library_of: dict[tuple, backends.Backend] = {}  # the argument types seen -> their backend
        self._hot: tuple | None = None  # the last of `_seen` that ran, checked first (names, kinds, ...)
        self._names = set(plan.inputs)
        self._pick = operator.itemgetter(*plan.inputs) if len(plan.inputs) > 1 else \
            (lambda given, name=plan.inputs[0]: (given[name],)) if plan.inputs else (lambda given: ())
        self._fixed = shape_stage.fixed_axes(model)  # axes of length 1, checked for every call signature
        self.whole_refused: str | None = None  # why the plan could not run as one numba function, if it could not

    @property
    def source(self) -> str:
        """Standalone Python source of the same computation (numpy)."""
        return python_source(self.plan, self.name)

    def _arguments(self, args: tuple, arrays: dict) -> tuple[list, dict]:
        """The plan's arrays in order, and the other inputs of the program that were given."""
        names = self.plan.inputs
        if len(args) > len(names):
            raise EinmlpError(f"{self.name} takes {len(names)} arrays ({', '.join(names)}), got {len(args)}")
        given, others = dict(zip(names, args)), {}
        for name, value in arrays.items():
            if name in given:
                raise EinmlpError(f"{self.name} got array {name} both by position and by keyword")
            if name in names:
                given[name] = value
            elif name in self.model.inputs:
                others[name] = value
            else:
                near = difflib.get_close_matches(name, list(self.model.inputs), n=1)
                hint = f"; did you mean {near[0]}?" if near else ""
                raise UnknownNameError(f"{self.name} has no input {name} (inputs: {', '.join(self.model.inputs)})"
                                       f"{hint}")
        missing = [n for n in names if n not in given]
        if missing:
            raise ShapeError(f"{self.name} needs array{'s' * (len(missing) > 1)} {', '.join(missing)}")
        return [given[n] for n in names], others

    def _check_shapes(self, shapes: dict) -> None:
        inputs = set(self.model.inputs)
        names = self._needed + tuple(n for n in self._checks
                                     if ((self.model.uses.get(n, frozenset()) | {n}) & inputs) <= shapes.keys())
        try:
            bound = {**shapes, **shape_stage.bind_needed(self.model, shapes, names)}
        except ShapeError as exc:
            hint = shape_stage.reuse_hint(self.model)
            raise ShapeError(f"{exc}{'; ' + hint if hint else ''}") from None
        for (name, axis), source in self._fixed.items():
            shape = bound.get(name)
            if shape is not None and len(shape) > axis and shape[axis] != 1:
                raise ShapeError(f"axis {axis} of {name} has length {shape[axis]}, but `{source}` indexes it with "
                                 "the fixed index 0, which needs an axis of length 1")

    def _bind(self, args: list, others: dict) -> tuple[backends.Backend, list, dict]:
        """The backend for this call, and the arguments (and the other inputs given) as its arrays."""
        backend = self.backend
        if backend is None:
            backend = backends.of([*args, *others.values()])
        device = backend.device([a for a in [*args, *others.values()] if backend.owns(a)])
        return (backend, [backend.asarray(n, a, device) for n, a in zip(self.plan.inputs, args)],
                {n: backend.asarray(n, a, device) for n, a in others.items()})

    def _fuses(self, backend: backends.Backend, args: list, dtype) -> bool:
        """Whether this signature runs the code for large arrays (fused kernels, products on MKL).

        Pinned (`backend="numba"`), or numpy arrays from FUSE_FROM elements with numba or MKL installed.
        """
        if dtype not in (np.float32, np.float64):
            return False
        return backend.fused or (backend is backends.NUMPY and self.backend is None
                                 and sum(a.size for a in args) >= fusion.FUSE_FROM
                                 and (fusion.available() or blas.available()))

    def _whole(self, backend: backends.Backend, args: list, dtype) -> bool:
        """Whether this signature may come to run the plan as one numba function (jitplan.py).

        float64 numpy arrays of fewer than `fusion.FUSE_FROM` elements, the backend chosen by
        the arrays, numba installed and no abstract function. It does once the signature has
        spent `WHOLE_AFTER` seconds in numpy calls (a training loop: the compile, or loading
        it from the disk cache, costs about what was spent), and only if it is faster.
        """
        return (dtype == np.float64 and backend is backends.NUMPY and self.backend is None
                and not self.plan.abstract and fusion.available() and sum(a.size for a in args) < fusion.FUSE_FROM)

    def _promote(self, warming: "_Warming", args: list, expected) -> None:
        """Compile the plan whole for `args`; where numba agrees with numpy on them, call it from now on."""
        contractions = {f"_c{k}": eq.text for k, eq in enumerate(self.plan.equations)
                        if eq.op == "einsum" and not eq.code}
        try:  # only ever a speed-up: whatever goes wrong, the numpy function (which just ran) stays
            whole = jitplan.compile_whole(python_source(self.plan, "_plan", standalone=False), contractions, args,
                                          expected)
            if not isinstance(whole, str):
                took = jitplan.fastest(whole, args)
                if took >= warming.best:
                    whole = f"numpy was faster ({warming.best * 1e6:.3g} us against numba's {took * 1e6:.3g} us)"
        except Exception as exc:  # noqa: BLE001 - e.g. numba installed but failing to import
            whole = f"compiling it failed ({type(exc).__name__}: {exc})"
        if isinstance(whole, str):
            self.whole_refused = whole
            return
        warming.whole = whole
        for key, (dtype, fn) in list(self._signatures.items()):
            if fn is warming:
                self._signatures[key] = (dtype, whole)
        for key, run in list(self._seen.items()):
            if run is warming:
                self._seen[key] = whole
        if (hot := self._hot) is not None and hot[-1] is warming:
            self._hot = (*hot[:-1], whole)

    def _fused_make(self):
        if self.backend is not None and self.backend.fused and not fusion.available():
            raise EinmlpError("backend 'numba' needs numba, which is not installed: pip install 'einmlp[fast]'")
        if "_fused" not in self.__dict__:
            self._fused = compile_plan(self.plan, fused=True)  # None: nothing to fuse or route
        return self._fused

    def _make_for(self, backend: backends.Backend):
        """The plain code, or the library's own version of it where its backend rewrites the source."""
        if backend.rewrite is None:
            return self._make
        if backend.name not in self._rewritten:
            self._rewritten[backend.name] = compile_plan(self.plan, rewrite=backend.rewrite)
        return self._rewritten[backend.name]

    def _function(self, backend: backends.Backend, dtype, device, fused: bool = False):
        key = (backend.name, dtype, device, fused)
        fn = self._functions_for.get(key)
        if fn is None:
            make = (fused and self._fused_make()) or self._make_for(backend)
            fn = make(backend.runtime(dtype, device))
            if self.plan.abstract:
                fn = functools.partial(fn, _functions=self._functions)
            fn = self._functions_for[key] = backend.wrap(fn)
        return fn

    def __call__(self, /, *args, **arrays):  # positional-only self: an input may be called `self`
        if (hot := self._hot) is not None:  # the signature of the last call again: a training loop's every step
            names, kinds, signatures, signature, run = hot
            if arrays:
                if not args and tuple(arrays) == names:
                    given = tuple(arrays.values())
                    if tuple(map(type, given)) == kinds and tuple(map(signature, given)) == signatures:
                        return run(*self._pick(arrays))
            elif not names and tuple(map(type, args)) == kinds and tuple(map(signature, args)) == signatures:
                return run(*args)
        if self.backend is None and not (args and arrays):  # a call seen before: straight to the arithmetic
            given = arrays.values() if arrays else args  # by keyword: every array given, read or only checked
            if library := self._library_of.get(kinds := tuple(map(type, given))):
                key = (tuple(arrays), kinds, tuple(map(library.signature, given)))
                run = self._seen.get(key)
                if run is not None:
                    self._hot = (*key, library.signature, run)
                    return run(*self._pick(arrays)) if arrays else run(*args)
        call = (tuple(arrays), tuple(arrays.values()) if arrays else args) if not (args and arrays) else None
        args, others = self._arguments(args, arrays)
        raw, raw_others = list(args), dict(others)
        backend, args, others = self._bind(args, others)
        key = (backend.name, *[backend.signature(a) for a in args],
               *[(n, *backend.signature(a)) for n, a in others.items()])
        entry = self._signatures.get(key)
        if entry is None:
            self._check_shapes({**{n: _shape(a) for n, a in zip(self.plan.inputs, args)},
                                **{n: _shape(a) for n, a in others.items()}})
            dtype = backend.float_type([*args, *others.values()])  # `L = x[i] 0` reads no array, yet is x's type
            fn = self._function(backend, dtype, backend.device(args), self._fuses(backend, args, dtype))
            if self._whole(backend, args, dtype):
                fn = _Warming(self, fn)
            elif (blocked := _Blocked.planned(self.plan, backend, args, fn)) is not None:
                fn = blocked
            entry = self._signatures[key] = (dtype, fn)
        dtype, fn = entry
        result = fn(*args)
        fn = self._signatures[key][1]  # the call may have compiled the plan whole (_Warming)
        if isinstance(result, dict):
            converted = {k: backend.result(v, dtype) for k, v in result.items()}
            same = all(converted[k] is v for k, v in result.items())
        else:
            converted = backend.result(result, dtype)
            same = converted is result
        # the same signature always gives results of the same types: convert again only if this one needed it
        if self.backend is None and call is not None and all(r is a for r, a in zip(raw, args)) and \
                all(raw_others[n] is a for n, a in others.items()):  # nothing converted: the next call need not be
            names, given = call
            kinds = tuple(map(type, given))
            self._library_of[kinds] = backend
            run = fn if same else (lambda *plan_arrays: self._converted(fn(*plan_arrays), backend, dtype))
            key = (names, kinds, tuple(map(backend.signature, given)))
            self._seen[key] = run
            self._hot = (*key, backend.signature, run)
        return converted

    @staticmethod
    def _converted(result, backend, dtype):
        if isinstance(result, dict):
            return {k: backend.result(v, dtype) for k, v in result.items()}
        return backend.result(result, dtype)

    def __repr__(self) -> str:
        return f"<compiled {self.name}({', '.join(self.plan.inputs)})>"


class _Warming:
    """A signature's numpy function, timed until it has run long enough to compile the plan whole."""

    def __init__(self, owner: Compiled, fn):
        self.owner, self.fn, self.after, self.spent, self.whole = owner, fn, WHOLE_AFTER, 0.0, None
        self.best = float("inf")  # the fastest numpy call seen

    def __call__(self, *args):
        if self.whole is not None:  # promoted: reached only through a caller that held on to this
            return self.whole(*args)
        start = time.perf_counter()
        result = self.fn(*args)
        took = time.perf_counter() - start
        self.spent += took
        self.best = min(self.best, took)
        if self.spent >= self.after:
            self.after = float("inf")  # one attempt per signature, whatever comes of it
            self.owner._promote(self, list(args), result)
        return result


def _rows(axis: int, start: int, stop: int) -> tuple:
    """The index of rows start:stop along `axis`."""
    return (slice(None),) * axis + (slice(start, stop),)


class _Blocked:
    """A plan that separates over its rows (rows.py), run on blocks of them: its temporaries stay in cache.

    Results are put together as the plan's `Blocking` says: rows by rows, sums over the
    rows by adding the blocks' sums, the rest from the first block.
    """

    def __init__(self, fn, blocking, rows: int, step: int):
        self.fn, self.blocking, self.rows, self.step = fn, blocking, rows, step

    @classmethod
    def planned(cls, plan: EinsumPlan, backend: backends.Backend, args: list, fn) -> _Blocked | None:
        """The blocked run of this signature, or None where it runs whole (small, not numpy, or not separable)."""
        if not plan.blocks or backend.module != "numpy" or sum(a.size for a in args) < BLOCK_FROM:
            return None
        best = None
        for blocking in plan.blocks:
            lengths = {a.shape[axis] for a, axis in zip(args, blocking.inputs) if axis is not None}
            if len(lengths) != 1:
                continue
            rows = lengths.pop()
            per_row = sum(a.size // max(rows, 1) for a, axis in zip(args, blocking.inputs) if axis is not None)
            step = max(BLOCK_MIN_ROWS, BLOCK_ELEMENTS // max(per_row, 1))
            if rows >= 2 * step and (best is None or rows > best.rows):
                best = cls(fn, blocking, rows, step)
        return best

    def __call__(self, *args):
        cuts = self.blocking.inputs
        parts = [(s, min(s + self.step, self.rows)) for s in range(0, self.rows, self.step)]
        if self.rows - parts[-1][0] < self.step // 2 and len(parts) > 1:  # no sliver of a block at the end
            parts[-2:] = [(parts[-2][0], self.rows)]
        total = None
        for start, stop in parts:
            block = self.fn(*[a if axis is None else a[_rows(axis, start, stop)] for a, axis in zip(args, cuts)])
            single = not isinstance(block, dict)
            block = {"": block} if single else block
            if total is None:
                total = {key: self._first(key, value) for key, value in block.items()}
            for key, value in block.items():
                kind, axis = self.blocking.outputs[key]
                if kind == ROWS:
                    total[key][_rows(axis, start, stop)] = value
                elif kind == PARTIAL and start > 0:
                    total[key] = total[key] + value  # weight-sized: a new array costs nothing here
        return total[""] if single else total

    def _first(self, key: str, value):
        kind, axis = self.blocking.outputs[key]
        if kind != ROWS:
            return value  # the block's own result: never an input or a view of one (codegen copies those)
        shape = list(np.shape(value))
        shape[axis] = self.rows
        return np.empty(shape, dtype=value.dtype)
