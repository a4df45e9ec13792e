"""Large matrix products through Intel MKL, where it is installed and measured faster.

numpy's wheels bring OpenBLAS. On recent Intel processors MKL runs large double-precision
products in 0.5-0.8x its time (in one thread on an AVX-512 Xeon, 4096x256 @ 256x512: 11.6 ms
against 15.0 ms; 4096x10 @ 10x512: 0.81 ms against 1.54 ms), and torch uses it, so networks
whose time is matrix products ran faster in torch than in any numpy code.

With the `mkl` package installed (`pip install 'einmlp[mkl]'`), the code that runs large
numpy arrays (`codegen.executed_source(fused=True)`) calls `_mm(a, b)` for each `a @ b`.
For each shape, type and memory layout, the first product runs on both libraries; the
faster one computes that product and every later one of the same shape, so the choice is
made on the real operands, once, and a shape's results never change library after its
first call. MKL is used only where its product agreed with numpy's on that first call, so
a layout this module read wrongly leaves the product to numpy, never a wrong result.
Products under `MKL_FROM` multiply-adds, other types, broadcast operands and layouts BLAS
cannot read stay numpy's `@`, as does one array times its own transpose (numpy runs BLAS
syrk, half the work). `EINMLP_MKL=0` in the environment turns the routing off.

An MKL already in the process is left alone: numpy's own (conda's numpy, whose `@` is MKL
already) or another library's, whose threading is not einmlp's to set.

MKL runs in the calling thread (its sequential layer). Two thread pools on the same cores
slow each other: with MKL's OpenMP threads beside OpenBLAS's, the wide network of
benchmarks/compare.py took 44-64 ms a call on two cores against numpy's 34 ms. Where
numpy's BLAS runs several threads, the first-product measurement then keeps the products
that threads speed up on numpy, and MKL takes those they do not.
"""

from __future__ import annotations

import ast
import ctypes
import ctypes.util
import importlib.metadata
import os
import threading
import time

import numpy as np

from .products import rewrite_products

MKL_FROM = 1 << 20  # multiply-adds (m n k) from which a product may go to MKL: below, numpy's
# call costs less than MKL's through ctypes (about 3 us), measured: 100^3 ran faster in numpy
TRIES = 2  # timed runs of each library on a shape's first product, after one untimed run each
LONG = 0.1  # seconds: products this long are timed once, with no warm-up run
ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112
SEQUENTIAL = 1  # MKL_THREADING_SEQUENTIAL
_TYPES = {np.dtype(np.float64): ("d", ctypes.c_double), np.dtype(np.float32): ("s", ctypes.c_float)}


def _library_paths() -> list[str]:
    """Where libmkl_rt may be: the files of the installed `mkl` package, then the system's."""
    paths = []
    try:
        files = importlib.metadata.files("mkl") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for f in files:
        if f.name.startswith(("libmkl_rt.so", "mkl_rt")) and f.name.endswith((".so.2", ".so.3", ".so", ".dll")):
            paths.append(str(f.locate()))
    if found := ctypes.util.find_library("mkl_rt"):
        paths.append(found)
    return paths


class _Mkl:
    """cblas ?gemm and ?gemm_batch_strided of libmkl_rt, for float64 and float32."""

    def __init__(self, lib: ctypes.CDLL):
        self.gemm, self.batched = {}, {}
        c_int, p = ctypes.c_int, ctypes.c_void_p
        for dtype, (t, scalar) in _TYPES.items():
            gemm = getattr(lib, f"cblas_{t}gemm")
            gemm.argtypes = [c_int, c_int, c_int, c_int, c_int, c_int, scalar, p, c_int, p, c_int, scalar, p, c_int]
            gemm.restype = None
            batched = getattr(lib, f"cblas_{t}gemm_batch_strided")
            batched.argtypes = [c_int, c_int, c_int, c_int, c_int, c_int, scalar, p, c_int, c_int, p, c_int, c_int,
                                scalar, p, c_int, c_int, c_int]
            batched.restype = None
            self.gemm[dtype], self.batched[dtype] = gemm, batched
        version = ctypes.create_string_buffer(256)
        lib.MKL_Get_Version_String(version, 256)
        self.version = version.value.decode(errors="replace").strip()


_loading, _measuring = threading.Lock(), threading.Lock()
_mkl: _Mkl | None | bool = False  # False: not looked for yet; None: not there


def mkl() -> _Mkl | None:
    """MKL's products, loaded on first use; None where it is not installed or turned off."""
    global _mkl
    if _mkl is False:
        with _loading:
            if _mkl is False:
                _mkl = _load()
    return _mkl


def _load() -> _Mkl | None:
    if os.environ.get("EINMLP_MKL", "1").strip().lower() in ("0", "false", "no", "off") or _loaded_already():
        return None
    for path in _library_paths():
        try:
            lib = ctypes.CDLL(path)
            lib.MKL_Set_Threading_Layer(SEQUENTIAL)  # before any other MKL call; no effect after one
            return _Mkl(lib)
        except (OSError, AttributeError):  # not loadable here, or too old for batch_strided
            continue
    return None


def _loaded_already() -> bool:
    """Whether an MKL is in the process already: numpy's own (conda's numpy), or another library's.

    Then numpy's `@` is MKL already, or MKL's threading is that library's to set: making it
    sequential here would make its products sequential too.
    """
    try:
        if "mkl" in str(np.show_config(mode="dicts")["Build Dependencies"]["blas"].get("name", "")).lower():
            return True
    except Exception:  # noqa: BLE001 - an older numpy, without show_config(mode=)
        pass
    if not hasattr(os, "RTLD_NOLOAD"):
        return False
    for name in ("libmkl_rt.so.3", "libmkl_rt.so.2", "libmkl_rt.so.1", "libmkl_rt.so"):
        try:
            ctypes.CDLL(name, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)  # only finds a library already loaded
            return True
        except OSError:
            continue
    return False


def available() -> bool:
    """Whether products can go to MKL here (loading it on first use)."""
    return mkl() is not None


def _layout(shape: tuple, strides: tuple, itemsize: int) -> tuple[int, int] | None:
    """(transpose flag, leading dimension) BLAS reads a row-major matrix view with, or None."""
    rows, cols = shape
    s0, s1 = strides
    if s1 == itemsize and s0 % itemsize == 0 and s0 // itemsize >= max(1, cols):
        return NO_TRANS, s0 // itemsize
    if s0 == itemsize and s1 % itemsize == 0 and s1 // itemsize >= max(1, rows):
        return TRANS, s1 // itemsize
    return None


class Products:
    """`_mm(a, b)`: `a @ b`, each large shape on the library measured faster on its first product."""

    def __init__(self, lib: _Mkl):
        self.lib = lib
        self.choice: dict[tuple, bool] = {}  # (shapes, type, layouts) -> whether MKL computes it

    def __call__(self, a, b):
        call = self._planned(a, b)
        if call is None:
            return a @ b
        key, run = call
        use = self.choice.get(key)
        if use is None:
            return self._first(key, run, a, b)
        return run() if use else a @ b

    def _planned(self, a, b):
        """(the shape's key, a function running the product on MKL), or None where numpy's `@` runs it."""
        if type(a) is not np.ndarray or type(b) is not np.ndarray:
            return None
        dtype = a.dtype
        if dtype != b.dtype or dtype not in _TYPES or not 2 <= b.ndim <= a.ndim <= 3 or a.size == 0 or b.size == 0 \
                or a.shape[-1] != b.shape[-2]:
            return None
        if b.ndim == 3:
            return self._batched(a, b) if a.shape[0] == b.shape[0] else None
        k, n = b.shape
        item, lead = dtype.itemsize, a.shape[:-1]
        if a.ndim == 2 and a.shape == b.shape[::-1] and a.strides == b.strides[::-1] and \
                a.ctypes.data == b.ctypes.data:
            return None  # x.T @ x: numpy's syrk does half the work
        if a.ndim == 3:  # a matrix applied to the last axis of a stack of rows: one product of its rows
            if a.strides[0] != a.shape[1] * a.strides[1]:
                return None
            a = a.reshape(-1, k)  # a view: the two leading axes are one run of rows
        m = a.shape[0]
        if m * n * k < MKL_FROM:
            return None
        la, lb = _layout(a.shape, a.strides, item), _layout(b.shape, b.strides, item)
        if la is None or lb is None:
            return None
        gemm = self.lib.gemm[dtype]

        def run():
            out = np.empty((m, n), dtype)
            gemm(ROW_MAJOR, la[0], lb[0], m, n, k, 1.0, a.ctypes.data, la[1], b.ctypes.data, lb[1], 0.0,
                 out.ctypes.data, n)
            return out.reshape(*lead, n)
        return (dtype.char, lead, k, n, la, lb), run

    def _batched(self, a, b):
        """The same for stacks of matrices, a[p] @ b[p] for each p: one MKL call over the stack."""
        (batch, m, k), n, item = a.shape, b.shape[2], a.dtype.itemsize
        if batch * m * n * k < MKL_FROM or a.strides[0] % item or b.strides[0] % item or \
                a.strides[0] < 0 or b.strides[0] < 0:
            return None
        la, lb = _layout(a.shape[1:], a.strides[1:], item), _layout(b.shape[1:], b.strides[1:], item)
        if la is None or lb is None:
            return None
        gemm, step_a, step_b = self.lib.batched[a.dtype], a.strides[0] // item, b.strides[0] // item

        def run():
            out = np.empty((batch, m, n), a.dtype)
            gemm(ROW_MAJOR, la[0], lb[0], m, n, k, 1.0, a.ctypes.data, la[1], step_a, b.ctypes.data, lb[1], step_b,
                 0.0, out.ctypes.data, n, m * n, batch)
            return out
        return (a.dtype.char, batch, m, k, n, la, lb, step_a, step_b), run

    def _first(self, key, run, a, b):
        """The first product of a shape: both libraries, timed; the faster one's result (MKL's only if they agree)."""
        with _measuring:
            if (use := self.choice.get(key)) is not None:
                return run() if use else a @ b
            times = {True: float("inf"), False: float("inf")}
            results = {}
            for attempt in range(TRIES + 1):
                took = {}
                for use_mkl in (False, True):
                    start = time.perf_counter()
                    results[use_mkl] = run() if use_mkl else a @ b
                    took[use_mkl] = time.perf_counter() - start
                long = sum(took.values()) >= LONG  # a warm-up would change nothing, and costs seconds
                if attempt or long:
                    times = {u: min(times[u], took[u]) for u in took}
                if long:
                    break
            use = times[True] < times[False] and _agree(results[True], results[False], a, b)
            self.choice[key] = use
            return results[use]


def _agree(mine, numpys, a, b) -> bool:
    """Whether MKL's product is numpy's up to rounding: a wrongly read layout differs by far more."""
    if mine.shape != numpys.shape or mine.dtype != numpys.dtype:
        return False
    with np.errstate(all="ignore"):
        scale = float(np.max(np.abs(a))) * float(np.max(np.abs(b))) * a.shape[-1]
        tolerance = 64 * np.finfo(mine.dtype).eps * scale
        same = np.isnan(mine) == np.isnan(numpys)
        close = np.abs(mine - numpys) <= tolerance
        return bool(np.all(same & (close | np.isnan(mine) | (mine == numpys))))


_products: Products | None = None


def products() -> Products | None:
    """The process's `_mm` (one, so each shape is measured once), or None without MKL."""
    global _products
    if _products is None and (lib := mkl()) is not None:
        with _loading:
            if _products is None:
                _products = Products(lib)
    return _products


def _transposed_pair(left: ast.AST, right: ast.AST) -> bool:
    """`x.T @ x` or `x @ x.T`: numpy runs it as syrk (Hessians' X.T diag(s) X), so it stays `@`."""
    def name(node):
        return node.id if isinstance(node, ast.Name) else None

    def transposed(node):
        return name(node.value) if isinstance(node, ast.Attribute) and node.attr == "T" else None
    of_left, of_right = transposed(left), transposed(right)
    return (of_left is not None and of_left == name(right)) or (of_right is not None and of_right == name(left))


def routed(source: str) -> str | None:
    """`source` with each `a @ b` written `_mm(a, b)` (but `x.T @ x`); None if it has no product to route."""
    return rewrite_products(source, "_mm", lambda a, b: None if _transposed_pair(a, b) else (a, b))
