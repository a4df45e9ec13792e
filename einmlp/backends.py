"""The array libraries a compiled function computes with: numpy, torch, jax, dask, cupy.

Generated code speaks a small part of numpy's API through the name `np`: elementwise
functions (`np.exp`, `np.logaddexp(0.0, x)`, `np.maximum(x, 0.0)`, `np.heaviside(x, 0.0)`,
`np.power`), `np.einsum`, `np.transpose(x, axes)`, `x.sum(axis=...)`, `x.T` on matrices,
`np.max(x, axis=k, keepdims=True)`, `@` and indexing with `None`. jax.numpy, dask.array
and cupy implement that part as numpy does, so their own module is `np`; torch gets a few
adapters (its functions take `dim=` and tensors where numpy takes `axis=` and numbers).
That is why there is no array-API bridge here: the standard has neither einsum nor
heaviside, and the code would still need these adapters.

Each backend also builds the helpers `_full`, `_arange` and `_equal` for one float type
and device, so float32 stays float32 and a GPU array never meets a host array, and gives
`_sigmoid`, `_dsigmoid` and `_softplus` (stable forms faster than numpy's logaddexp) its
namespace.
"""

from __future__ import annotations

import ast
import functools
import importlib
import operator
import types

import numpy as np

from .errors import EinmlpError, ShapeError
from .products import rewrite_products


def _ipow(x, n):
    result = x
    for _ in range(n - 1):
        result = result * x
    return result


def _sigmoid(x, np=np):
    # 1 / (1 + exp(-x)) from r = e / (1 + e), e = exp(-|x|): no overflow, within an ulp (1 - r
    # rounds once), and 2-4x faster than exp(-logaddexp(0, -x)). `np` is the backend's namespace.
    e = np.exp(-np.abs(x))
    r = e / (1.0 + e)
    return np.where(x >= 0, 1.0 - r, r)


def _dsigmoid(x, np=np):
    # sigmoid(x) (1 - sigmoid(x)) as e / (1 + e)^2, e = exp(-|x|): it is even in x, never
    # overflows, and has no 1 - s that rounds away near s = 1. Four passes where seven were.
    e = np.exp(-np.abs(x))
    t = 1.0 + e
    return e / (t * t)


def _softplus(x, np=np):
    # log(1 + exp(x)) as max(x, 0) + log1p(exp(-|x|)): no overflow, as accurate as
    # logaddexp(0, x) (within 1e-15 of the exact value) and 1.7-2x faster.
    return np.maximum(x, 0.0) + np.log1p(np.exp(-np.abs(x)))


def refuse_masked(name: str, value) -> None:
    """A masked array's hidden entries would count as numbers: every sum would read them."""
    if isinstance(value, np.ma.MaskedArray):
        raise ShapeError(f"input {name} is a masked array, and einmlp sums every entry, masked or not: "
                         f"give {name}.filled(value) with the value masked entries should have")


class Backend:
    """numpy, and the base of the others: what `np` is, and how arrays are made and typed."""

    name = "numpy"
    module = "numpy"
    fused = False  # whether it runs the plan's fused kernels (fusion.py)

    @functools.cached_property
    def lib(self):
        """The library itself, imported on first use (torch and jax take a second to import)."""
        try:
            return importlib.import_module(self.module)
        except ImportError:
            raise EinmlpError(f"backend {self.name!r} needs {self.module}, which is not installed") from None

    @property
    def namespace(self):
        """What the name `np` means in the generated code."""
        return self.lib

    def owns(self, value) -> bool:
        """Whether `value` is one of this library's arrays (without importing the library).

        numpy's own are exactly ndarray and numpy's scalars: a subclass computes by its own
        rules (np.matrix multiplies `*` as matrices), so it is converted to a plain array.
        """
        if self.module == "numpy":
            return type(value) is np.ndarray or isinstance(value, np.generic)
        return type(value).__module__.split(".")[0] == self.module

    def asarray(self, name: str, value, like=None):
        """`value` as this library's floating-point array (integers become floats, complex is refused)."""
        refuse_masked(name, value)
        xp = self.namespace
        try:
            array = value if self.owns(value) else xp.asarray(value)
        except Exception as exc:
            raise ShapeError(f"input {name} is not an array {self.name} can take: {exc}") from None
        kind = self.kind(array.dtype)
        if kind == "c":  # sympy took every value real: |x|^2 became x^2, wrong for complex x
            raise ShapeError(f"input {name} is complex ({array.dtype}); einmlp's values and derivatives are real: "
                             f"give the real and imaginary parts as two inputs")
        if kind != "f":
            if kind not in "biu":
                raise ShapeError(f"input {name} has dtype {array.dtype}, expected numbers")
            array = self.astype(array, self.default_float)
        return array

    def astype(self, array, dtype):
        return array.astype(dtype)

    def kind(self, dtype) -> str:
        """The one-letter kind of a dtype, as numpy spells it: f float, c complex, i/u/b integers and bools."""
        return np.dtype(dtype).kind

    @property
    def default_float(self):
        return np.float64

    def float_type(self, arrays):
        """The float type the computation runs in: the inputs' common type."""
        return np.result_type(*[a.dtype for a in arrays]) if arrays else np.dtype(np.float64)

    def device(self, arrays):
        return None

    # What a call's compiled function and shape check depend on, for one array: a C-level
    # getter, as `Compiled` maps it over every argument of every call.
    signature = staticmethod(operator.attrgetter("shape", "dtype"))

    def helpers(self, dtype, device) -> dict:
        """`_full`, `_arange`, `_equal` making arrays of `dtype` on `device`."""
        xp = self.namespace

        def _full(shape, value):
            if hasattr(value, "ndim"):  # an array, maybe 0-d (a lazy dask scalar is not a fill value)
                return xp.broadcast_to(value, shape).astype(dtype)  # a fresh array, as astype copies
            return xp.full(shape, value, dtype=dtype)

        def _arange(size, axis, ndim):
            return xp.arange(size).reshape([size if k == axis else 1 for k in range(ndim)])

        def _equal(a, b):
            return (xp.asarray(a) == b).astype(dtype)
        return {"_full": _full, "_arange": _arange, "_equal": _equal}

    def runtime(self, dtype, device) -> dict:
        """The globals the generated code runs with."""
        return {"np": self.namespace, "_ipow": _ipow, "_sigmoid": functools.partial(_sigmoid, np=self.namespace),
                "_dsigmoid": functools.partial(_dsigmoid, np=self.namespace),
                "_softplus": functools.partial(_softplus, np=self.namespace), "_fresh": self.fresh,
                **self.helpers(dtype, device)}

    @staticmethod
    def fresh(array):
        """A copy of a result that would otherwise be (a view of) an input or another result."""
        return array.copy()

    def wrap(self, fn):
        """The generated function as this library runs it best (jax: jitted)."""
        return fn

    # A pass over the generated source for this library, or None: jax's rewrites `a.T @ b`.
    rewrite = None

    def result(self, value, dtype):
        """A result in the computation's float type, as this library's array."""
        if getattr(value, "dtype", None) == dtype and self.owns(value):
            return value
        return self.namespace.asarray(value).astype(dtype)


class Torch(Backend):
    name = module = "torch"

    @functools.cached_property
    def namespace(self):
        torch = self.lib

        def number(x, like):
            return x if isinstance(x, torch.Tensor) else torch.as_tensor(x, dtype=like.dtype, device=like.device)
        def unary(f):  # numpy's functions also take numbers: sqrt(N_i) is np.sqrt(X.shape[0])
            return lambda x: f(x if isinstance(x, torch.Tensor) else torch.as_tensor(x, dtype=torch.float64))
        ns = types.SimpleNamespace(einsum=torch.einsum, inf=torch.inf, nan=torch.nan, **{f: unary(getattr(torch, f))
                                   for f in ("exp", "log", "log1p", "tanh", "sqrt", "abs", "sin", "cos", "sign")})
        ns.logaddexp = lambda a, b: torch.logaddexp(number(a, b), number(b, a) if isinstance(a, torch.Tensor) else b)
        ns.maximum = lambda a, b: torch.maximum(a, number(b, a))
        ns.heaviside = lambda x, h: torch.heaviside(x, number(h, x))
        ns.power = lambda a, b: torch.pow(a, b)
        ns.transpose = lambda x, axes: x.permute(*axes)
        ns.where = lambda c, a, b: torch.where(c, a, number(b, a))
        ns.max = lambda x, axis, keepdims: torch.amax(x, dim=axis, keepdim=keepdims)
        ns.reshape = torch.reshape
        ns.asarray = torch.as_tensor
        return ns

    @property
    def default_float(self):
        return self.lib.get_default_dtype()

    def float_type(self, arrays):
        return functools.reduce(self.lib.promote_types, [a.dtype for a in arrays]) if arrays \
            else self.default_float

    def device(self, arrays):
        devices = {a.device for a in arrays}
        if len(devices) > 1:
            raise ShapeError(f"the arrays are on different devices: {', '.join(sorted(map(str, devices)))}")
        return devices.pop() if devices else None

    signature = staticmethod(operator.attrgetter("shape", "dtype", "device"))

    def kind(self, dtype) -> str:
        return "f" if dtype.is_floating_point else "c" if dtype.is_complex else "b" if dtype == self.lib.bool else "i"

    def asarray(self, name: str, value, like=None):
        refuse_masked(name, value)
        if not self.owns(value) and like is not None:  # numpy arrays join the tensors' device
            value = self.lib.as_tensor(np.asarray(value), device=like)
        return super().asarray(name, value)

    def astype(self, array, dtype):
        return array.to(dtype)

    def helpers(self, dtype, device) -> dict:
        torch = self.lib

        def _full(shape, value):
            if isinstance(value, torch.Tensor):  # 0-d too: float() would cut it out of torch's graph
                return value.expand(shape).to(dtype).clone()
            return torch.full(shape, float(value), dtype=dtype, device=device)

        def _arange(size, axis, ndim):
            return torch.arange(size, device=device).reshape([size if k == axis else 1 for k in range(ndim)])

        def _equal(a, b):
            return torch.eq(torch.as_tensor(a, device=device), b).to(dtype)
        return {"_full": _full, "_arange": _arange, "_equal": _equal}

    @staticmethod
    def fresh(array):
        return array.clone()  # in torch's graph, as every operation of the plan

    def result(self, value, dtype):
        torch = self.lib
        if isinstance(value, torch.Tensor):
            return value if value.dtype == dtype else value.to(dtype)
        return torch.as_tensor(value, dtype=dtype)


class Jax(Backend):
    name = "jax"
    module = "jax.numpy"

    def owns(self, value) -> bool:
        return type(value).__module__.split(".")[0] in ("jax", "jaxlib")

    @property
    def default_float(self):
        return self.lib.zeros(()).dtype  # float32 unless jax_enable_x64

    def float_type(self, arrays):
        return self.lib.result_type(*arrays) if arrays else self.default_float

    def wrap(self, fn):
        return importlib.import_module("jax").jit(fn)

    def runtime(self, dtype, device) -> dict:
        return {**super().runtime(dtype, device), "_tdot": self._tdot}

    def _tdot(self, a, b):
        """`a.T @ b` as one contraction over both leading axes.

        XLA's CPU dot copied the transpose of a batch-sized `a` first: the article's gradients at
        batch 100,000 took 3.45 ms that way, 3.08 ms this way, as jax's own gradient contracts.
        """
        if a.ndim not in (1, 2):  # `.T` reverses every axis; the generated code takes it of matrices only
            return a.T @ b
        return importlib.import_module("jax").lax.dot_general(a, b, (((0,), (0,)), ((), ())))

    @staticmethod
    def rewrite(source: str) -> str | None:
        """`source` with each `a.T @ b` written `_tdot(a, b)`; None if it has none."""
        return rewrite_products(source, "_tdot", lambda a, b: (a.value, b)
                                if isinstance(a, ast.Attribute) and a.attr == "T" else None)


class Dask(Backend):
    name = "dask"
    module = "dask.array"

    def owns(self, value) -> bool:
        return type(value).__module__.split(".")[0] == "dask"

    @functools.cached_property
    def namespace(self):
        def heaviside(x, h):  # dask.array has no heaviside: step' of relu
            return (x > 0).astype(x.dtype) + (x == 0).astype(x.dtype) * h
        return _Extended(self.lib, heaviside=heaviside)


class _Extended:
    """A module with a few functions added, for a library that lacks them."""

    def __init__(self, module, **added):
        self._module = module
        self.__dict__.update(added)

    def __getattr__(self, name):
        return getattr(self._module, name)


class Cupy(Backend):
    name = module = "cupy"


class Numba(Backend):
    """numpy arrays, with every elementwise expression of more than one operation one numba kernel."""

    name = "numba"
    module = "numpy"
    fused = True


BACKENDS = {b.name: b for b in (Backend(), Numba(), Torch(), Jax(), Dask(), Cupy())}
NUMPY = BACKENDS["numpy"]


def named(name: str) -> Backend:
    """The backend called `name`; a clear error lists the others."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise EinmlpError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}") from None


def of(arrays) -> Backend:
    """The backend of the given arrays: the one library among them other than numpy, else numpy.

    numpy arrays and Python numbers join the other library's arrays; arrays of two
    libraries other than numpy are refused rather than copied between them.
    """
    found = {}
    for a in arrays:
        module = type(a).__module__.split(".")[0]
        if module in ("numpy", "builtins"):
            continue
        for b in BACKENDS.values():
            if b is not NUMPY and b.owns(a):
                found[b.name] = b
                break
    if len(found) > 1:
        raise ShapeError(f"the arrays come from different libraries ({', '.join(found)}); "
                         "give them all as one library's arrays, or pin one with compile(backend=...)")
    return next(iter(found.values()), NUMPY)
