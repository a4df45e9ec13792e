"""Fused elementwise kernels for numpy arrays, compiled by numba.

A plan runs an elementwise chain (Ytilde, then 2 Ytilde, then times f2'(C)) as one numpy
call per operation: a pass over batch-sized arrays and a temporary each. Here the plan's
source is rewritten: a temporary that one elementwise expression alone reads is written
into it, and each elementwise expression of more than one operation becomes one numba
kernel: one pass, no temporaries, numpy's broadcasting. A kernel is a ufunc, and the same
scalar body as two loops for a result whose short last axis an operand is broadcast along
(`_call`). Matrix products (BLAS, or MKL: blas.py), reductions and contractions stay numpy.

numba was chosen by measurement: a fused ufunc ran `(1 - x*x) * y` over 10^6 elements 10x
faster than numpy's three passes, numexpr loses everywhere (15-50 us a call, no vectorised
tanh), and jax needs its own arrays (the jax backend). The kernels go to a module in
einmlp's cache directory named by the hash of its source, and numba caches their machine
code beside it, so the compile cost is paid once per plan on a machine. Below
`FUSE_FROM` elements the plain numpy code runs: numba would only add its dispatch.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

FUSE_FROM = 50_000   # input elements from which a call runs the fused code (measured: benchmarks/compare.py)
# Inside a kernel: arithmetic and the functions LLVM vectorises. exp, log, tanh, sin, cos,
# logaddexp and power stay numpy calls (their arguments still fuse): numpy's SIMD versions
# ran 9-11x faster than numba's scalar ones (tanh over 10^6 elements: 2.1 ms against 24 ms).
UNARY = {"sqrt", "abs", "sign"}
BINARY = {"maximum", "heaviside"}
COMPARISONS = (ast.Gt, ast.GtE, ast.Lt, ast.LtE, ast.Eq, ast.NotEq)
SIGNATURES = ("float32", "float64")  # in this order: numpy takes the first loop its inputs cast to safely


def available() -> bool:
    """Whether numba can be imported (without importing it: that takes half a second)."""
    return importlib.util.find_spec("numba") is not None


def _call_name(node: ast.AST) -> str | None:
    """`exp` for `np.exp(...)`, `_ipow` for `_ipow(...)`, else None."""
    if not isinstance(node, ast.Call) or node.keywords:
        return None
    f = node.func
    if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "np":
        if f.attr == "where":
            return f.attr if len(node.args) == 3 and _condition(node.args[0]) is not None else None
        return f.attr if (f.attr in UNARY and len(node.args) == 1) or (f.attr in BINARY and len(node.args) == 2) \
            else None
    if isinstance(f, ast.Name) and f.id == "_ipow" and len(node.args) == 2 and isinstance(node.args[1], ast.Constant):
        return "_ipow"
    return None


def _condition(node: ast.AST) -> list[ast.AST] | None:
    """What a where's condition compares: one comparison, or comparisons joined by & (relu's gates); else None."""
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], COMPARISONS):
        return [node.left, node.comparators[0]]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitAnd):
        left, right = _condition(node.left), _condition(node.right)
        return None if left is None or right is None else left + right
    return None


def is_op(node: ast.AST) -> bool:
    """An elementwise operation: + - * / on arrays, unary minus, or one of numpy's elementwise functions."""
    if isinstance(node, ast.BinOp):
        return isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div))
    if isinstance(node, ast.UnaryOp):
        return isinstance(node.op, ast.USub)
    return _call_name(node) is not None


def _operands(node: ast.AST) -> list[ast.AST]:
    if isinstance(node, ast.BinOp):
        return [node.left, node.right]
    if isinstance(node, ast.UnaryOp):
        return [node.operand]
    name = _call_name(node)
    if name == "where":
        return _condition(node.args[0]) + node.args[1:]
    return node.args[:1] if name == "_ipow" else list(node.args)


def _count_ops(node: ast.AST) -> int:
    if not is_op(node):
        return 0
    comparisons = len(_condition(node.args[0])) // 2 if _call_name(node) == "where" else 0
    return 1 + comparisons + sum(_count_ops(o) for o in _operands(node))


class Kernel:
    """One elementwise region: its scalar body over parameters a0, a1, ... and the arguments for them."""

    def __init__(self, root: ast.AST):
        self.arguments: list[ast.AST] = []
        self.keys: dict[str, str] = {}
        self.body = self._scalar(root)

    def _param(self, leaf: ast.AST) -> ast.Name:
        key = ast.dump(leaf)
        if key not in self.keys:
            self.keys[key] = f"a{len(self.arguments)}"
            self.arguments.append(leaf)
        return ast.Name(self.keys[key], ast.Load())

    def _scalar(self, node: ast.AST) -> ast.AST:
        if isinstance(node, ast.Constant):
            return node
        if not is_op(node):
            return self._param(node)
        name = _call_name(node)
        if name == "_ipow":
            base = self._scalar(node.args[0])
            out = base
            for _ in range(node.args[1].value - 1):
                out = ast.BinOp(out, ast.Mult(), base)
            return out
        if name == "where":  # relu' gating g: g where x > 0, else 0, even where g is inf (one pass, not three)
            node = node.args
            return ast.IfExp(self._test(node[0]), self._scalar(node[1]), self._scalar(node[2]))
        if name == "heaviside":  # numba has no scalar heaviside (relu'): 1, h at 0, 0, and nan stays nan
            x, h = self._scalar(node.args[0]), self._scalar(node.args[1])

            def test(op):
                return ast.Compare(x, [op], [ast.Constant(0.0)])
            return ast.IfExp(test(ast.Gt()), ast.Constant(1.0), ast.IfExp(
                test(ast.Eq()), h, ast.IfExp(test(ast.Lt()), ast.Constant(0.0), x)))
        if name:
            return ast.Call(node.func, [self._scalar(a) for a in node.args], [])
        if isinstance(node, ast.BinOp):
            return ast.BinOp(self._scalar(node.left), node.op, self._scalar(node.right))
        return ast.UnaryOp(node.op, self._scalar(node.operand))

    def _test(self, node: ast.AST) -> ast.AST:
        if isinstance(node, ast.Compare):
            return ast.Compare(self._scalar(node.left), node.ops, [self._scalar(node.comparators[0])])
        return ast.BinOp(self._test(node.left), ast.BitAnd(), self._test(node.right))

    def element(self, reads: dict[str, str]) -> str:
        """The scalar body's source with each parameter aN read as `reads["aN"]` (`a0[_i, _j]`).

        From a copy in which no node is reached twice: heaviside's body reads its argument four times.
        """
        class Read(ast.NodeTransformer):
            def visit_Name(self, node):
                return ast.parse(reads[node.id], mode="eval").body if node.id in reads else node
        return ast.unparse(Read().visit(ast.parse(ast.unparse(self.body), mode="eval").body))


def _inline_single_uses(fn: ast.FunctionDef, keep: set[str]) -> None:
    """Write a temporary computed elementwise into the one elementwise expression that reads it."""
    while True:
        loads: dict[str, list] = {}
        parents: dict[int, ast.AST] = {}
        for node in ast.walk(fn):
            for child in ast.iter_child_nodes(node):
                parents[id(child)] = node
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                loads.setdefault(node.id, []).append(node)
        done = False
        for stmt in list(fn.body):
            if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)):
                continue
            name = stmt.targets[0].id
            uses = loads.get(name, [])
            if name in keep or len(uses) != 1 or not is_op(stmt.value):
                continue
            parent = parents.get(id(uses[0]))
            if parent is None or not is_op(parent) or uses[0] not in _operands(parent):
                continue
            for field, value in ast.iter_fields(parent):
                if value is uses[0]:
                    setattr(parent, field, stmt.value)
                elif isinstance(value, list) and uses[0] in value:
                    value[value.index(uses[0])] = stmt.value
            fn.body.remove(stmt)
            done = True
            break
        if not done:
            return


def fuse(source: str, outputs: set[str]) -> tuple[str, str] | None:
    """(the function's source calling kernels, the kernels' module source), or None if nothing fuses."""
    tree = ast.parse(source)
    fn = tree.body[0]
    assigned = [s.targets[0].id for s in fn.body if isinstance(s, ast.Assign)]
    if len(assigned) != len(set(assigned)):  # the rewriting relies on each name assigned once
        return None
    _inline_single_uses(fn, outputs)
    kernels: list[Kernel] = []

    class Replace(ast.NodeTransformer):
        def visit(self, node):
            if is_op(node) and _count_ops(node) >= 2:
                kernel = Kernel(node)
                kernels.append(kernel)
                return ast.Call(ast.Name(f"_k{len(kernels) - 1}", ast.Load()),
                                [self.visit(a) for a in kernel.arguments], [])
            return self.generic_visit(node)
    Replace().visit(fn)
    if not kernels:
        return None
    lines = ["import numpy as np", "from numba import njit, vectorize", "", CALL.format(LOOPS_UP_TO=LOOPS_UP_TO)]
    for k, kernel in enumerate(kernels):
        params = [f"a{n}" for n in range(len(kernel.arguments))]
        sigs = ", ".join(f'"{t}({", ".join([t] * len(params))})"' for t in SIGNATURES)
        lines += ["", f"@vectorize([{sigs}], cache=True)", f"def _u{k}({', '.join(params)}):",
                  f"    return {ast.unparse(kernel.body)}", ""]
        lines += ["", '@njit(error_model="numpy", cache=True)', f"def _l{k}({', '.join(params)}, _out):"]
        lines += ["    for _i in range(_out.shape[0]):", "        for _j in range(_out.shape[1]):",
                  f"            _out[_i, _j] = {kernel.element({a: f'{a}[_i, _j]' for a in params})}", ""]
        lines += ["", f"def _k{k}({', '.join(params)}):", f"    return _call(_u{k}, _l{k}, {', '.join(params)})", ""]
    return ast.unparse(ast.fix_missing_locations(tree)) + "\n", "\n".join(lines)


LOOPS_UP_TO = 32  # the longest last axis run as loops: from 64 the ufunc's inner loop is as fast (measured)
# How a kernel is called. numpy's broadcasting runs a ufunc's inner loop once per row where an
# operand is broadcast along a short last axis: the article's 2 Cbar[i,0] W2[k,0] A[i,k] over
# (16384, 4) took 118 us as a ufunc, about 7 ns a row of four, and 39 us as the same body in
# two loops over the operands broadcast to the result's shape (views with stride 0). There the
# loops run it; everywhere else the ufunc (SIMD over contiguous arrays). Both compute the same
# scalar body with the same types, so they give the same bits.
CALL = '''
LOOPS_UP_TO = {LOOPS_UP_TO}


def _call(ufunc, loops, *operands):
    shapes = [np.shape(a) for a in operands]
    if max(map(len, shapes)) != 2:
        return ufunc(*operands)
    shapes = [(1,) * (2 - len(s)) + tuple(s) for s in shapes]
    rows, cols = max(s[0] for s in shapes), max(s[1] for s in shapes)
    if not 2 <= cols <= LOOPS_UP_TO or rows == 0 or all(s == (rows, cols) or s == (1, 1) for s in shapes) or \\
            any(s[0] not in (1, rows) or s[1] not in (1, cols) for s in shapes):
        return ufunc(*operands)
    dtype = np.result_type(*operands)
    if dtype not in (np.float64, np.float32) or any(np.asarray(a).dtype.kind != "f" for a in operands if np.ndim(a)):
        return ufunc(*operands)
    out = np.empty((rows, cols), dtype)
    loops(*[np.broadcast_to(np.asarray(a, dtype), (rows, cols)) for a in operands], out)
    return out
'''


def _cache_dir() -> Path:
    base = os.environ.get("EINMLP_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "einmlp")
    path = Path(base) / "kernels"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".probe"
        probe.write_text("")
        probe.unlink()
        return path
    except OSError:  # a read-only home: compile in a private directory, once per process
        return Path(tempfile.mkdtemp(prefix="einmlp-kernels-"))


def load_module(module_source: str):
    """The module of `module_source`, from the file in the cache directory named by its hash.

    A file there whose text is not exactly this source is rewritten before it is imported.
    """
    digest = hashlib.sha256(module_source.encode()).hexdigest()[:24]
    name = f"einmlp_kernels_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    path = _cache_dir() / f"{name}.py"
    if not path.exists() or path.read_text() != module_source:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(module_source)
        os.replace(tmp, path)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before it runs: numba's cache looks the module up by name
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def load_kernels(module_source: str) -> dict:
    """The kernels of `module_source` (`load_module`)."""
    return {k: v for k, v in vars(load_module(module_source)).items() if k.startswith("_k")}
