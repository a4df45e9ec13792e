"""A whole plan as one numba function: no Python between its statements.

On small arrays a plan's time is not arithmetic but the interpreter and numpy's dispatch:
the article's gradients at batch 10 are 16 numpy calls of about half a microsecond each.
Compiled by numba as one function, the same statements run in about a quarter of that
time (numba also fuses each elementwise expression into one loop). opt_einsum's
contractions of one or two operands are written as broadcast products, and softmax's
shift as a loop; a plan with a larger contraction, a Kronecker delta or an abstract
function runs as numpy.

The module goes to einmlp's cache directory (fusion.py's), named by the hash of its
source, and numba caches its machine code beside it: the compile (one to two seconds)
is paid once per plan and signature on a machine, loading it later takes a fraction of
that. `Compiled` calls it only once it has agreed with the numpy code on a real call
(`agrees`), so a difference in numba's reading of the code is a refusal, never a
wrong result.
"""

from __future__ import annotations

import ast
import threading
import time
import warnings

import numpy as np

from . import backends, fusion
from .codegen import Contraction, run_source

# The helpers of backends.py, for numba: no `np=` parameter, and _ipow with a loop numba can type.
HELPERS = '''
import numpy as np
from numba import njit


@njit(error_model="numpy", cache=True)
def _ipow(x, n):
    result = x * 1.0
    for _ in range(n - 1):
        result = result * x
    return result


@njit(error_model="numpy", cache=True)
def _sigmoid(x):
    e = np.exp(-np.abs(x))
    r = e / (1.0 + e)
    return np.where(x >= 0, 1.0 - r, r)


@njit(error_model="numpy", cache=True)
def _dsigmoid(x):
    e = np.exp(-np.abs(x))
    t = 1.0 + e
    return e / (t * t)


@njit(error_model="numpy", cache=True)
def _softplus(x):
    return np.maximum(x, 0.0) + np.log1p(np.exp(-np.abs(x)))


@njit(error_model="numpy", cache=True)
def _fresh(a):
    return a.copy()


@njit(error_model="numpy", cache=True)
def _full(shape, value):
    return np.ones(shape) * value  # value * 1.0 is value, nan and infinities too


@njit(error_model="numpy", cache=True)
def _max_keep(x, a, b):
    # np.max(x, axis=k, keepdims=True), which numba lacks, as an (a, 1, c) array: a is the product
    # of the lengths before axis k, b its length (softmax's shift: nan wins, as in numpy)
    if a * b == 0:
        raise ValueError("the maximum of no numbers")
    c = x.size // (a * b)
    x3 = np.ascontiguousarray(x).reshape((a, b, c))
    out = np.empty((a, 1, c))
    for i in range(a):
        for j in range(c):
            m = x3[i, 0, j]
            for t in range(1, b):
                v = x3[i, t, j]
                if v > m or v != v:
                    m = v
                    if m != m:
                        break
            out[i, 0, j] = m
    return out


@njit(error_model="numpy", cache=True)
def _equal(a, b):
    return (np.asarray(a) == b).astype(np.float64)
'''
CALLABLE = {"_ipow", "_sigmoid", "_dsigmoid", "_softplus", "_fresh", "_full", "_max_keep", "_equal"}  # and np.*
_LOCK = threading.Lock()  # one compile at a time: numba's own lock would serialise them anyway


def broadcast_einsum(subscripts: str, operands: list[str]) -> str | None:
    """An einsum of one or two operands as numpy that numba compiles: a broadcast product.

    The operands are laid out over the output's indices then the summed ones, multiplied,
    and summed over the latter: `a,b->ba` (an outer product) is `a[None, :] * b[:, None]`,
    `a,ab->a` (each row's dot product) is `(a[:, None] * ab).sum(axis=1)`. None for a
    repeated index in one operand (a diagonal), more operands, or a product larger than both
    its operands and the output (`ab,bc->ac` would be a*b*c numbers: that is BLAS's).
    """
    inputs, out = subscripts.split("->")
    inputs = inputs.split(",")
    if len(inputs) > 2 or any(len(set(s)) != len(s) for s in inputs):
        return None
    order = list(out) + [i for i in dict.fromkeys("".join(inputs)) if i not in out]
    if len(order) > len(out) and not any(set(labels) == set(order) for labels in inputs):
        return None
    factors = []
    for labels, name in zip(inputs, operands):
        present = [i for i in order if i in labels]
        perm = tuple(labels.index(i) for i in present)
        factor = name if perm == tuple(range(len(perm))) else f"{name}.transpose({perm!r})"
        if len(labels) < len(order):
            factor = f"{factor}[{', '.join(':' if i in labels else 'None' for i in order)}]"
        factors.append(factor)
    expression = " * ".join(factors)
    for axis in reversed(range(len(out), len(order))):
        expression = f"({expression}).sum(axis={axis})" if axis else f"({expression}).sum()"
    return expression


def _max_keep_call(node: ast.Call) -> str | None:
    """`np.max(x, axis=k, keepdims=True)` (softmax's shift) through `_max_keep`, or None for any other call."""
    f = node.func
    if not (isinstance(f, ast.Attribute) and f.attr == "max" and isinstance(f.value, ast.Name) and f.value.id == "np"
            and len(node.args) == 1 and isinstance(x := node.args[0], ast.Name)):
        return None
    options = {k.arg: k.value for k in node.keywords}
    axis, keep = options.get("axis"), options.get("keepdims")
    if options.keys() != {"axis", "keepdims"} or not (isinstance(axis, ast.Constant) and type(axis.value) is int
                                                      and axis.value >= 0 and isinstance(keep, ast.Constant)
                                                      and keep.value is True):
        return None
    k, name = axis.value, x.id
    before = " * ".join(f"{name}.shape[{n}]" for n in range(k)) or "1"
    return (f"_max_keep({name}, {before}, {name}.shape[{k}])"
            f".reshape({name}.shape[:{k}] + (1,) + {name}.shape[{k + 1}:])")


def _single_axis_sums(node: ast.Call) -> ast.Call | None:
    """`x.sum(axis=(0, 1))` as `x.sum(axis=1).sum(axis=0)` (numba sums over one axis at a time), else None."""
    f = node.func
    if not (isinstance(f, ast.Attribute) and f.attr == "sum" and not node.args and len(node.keywords) == 1
            and node.keywords[0].arg == "axis" and isinstance(axes := node.keywords[0].value, ast.Tuple)
            and all(isinstance(a, ast.Constant) and type(a.value) is int and a.value >= 0 for a in axes.elts)):
        return None
    out = f.value
    for axis in sorted({a.value for a in axes.elts}, reverse=True):  # the last first: the others keep their numbers
        out = ast.Call(ast.Attribute(out, "sum", ast.Load()), [], [ast.keyword("axis", ast.Constant(axis))])
    return out


def _hoist(fn: ast.FunctionDef) -> None:
    """Give each operand of every elementwise statement a variable, assigned just before it: `_v6_1 = W2.T`.

    numpy then reports each operand's shape (`values`), and the statement's loops read them.
    """
    body = []
    for tag, statement in enumerate(fn.body):
        if isinstance(statement, ast.Assign) and fusion.is_op(statement.value):
            kernel = fusion.Kernel(statement.value)
            names = [f"_v{tag}_{n}" for n in range(len(kernel.arguments))]  # each its own: numba types a name once
            body += [ast.Assign([ast.Name(v, ast.Store())], leaf) for v, leaf in zip(names, kernel.arguments)]
            statement = ast.Assign(statement.targets, _Operands(kernel.keys, names).visit(statement.value))
        body.append(statement)
    fn.body = body


class _Operands(ast.NodeTransformer):
    """An elementwise expression with each of its kernel's operands replaced by the variable holding it."""

    def __init__(self, keys: dict[str, str], names: list[str]):
        self.keys, self.names = keys, names

    def visit(self, node):
        if not fusion.is_op(node) and (param := self.keys.get(ast.dump(node))) is not None:
            return ast.Name(self.names[int(param[1:])], ast.Load())
        return self.generic_visit(node)


def values(plan_source: str, contractions: dict[str, str], args: list) -> dict:
    """Every variable of the plan, `_hoist`ed, run by numpy on `args`: the shapes its loops are written for."""
    tree = ast.parse(plan_source)
    fn = tree.body[0]
    _hoist(fn)
    fn.body[-1] = ast.Return(ast.Call(ast.Name("_locals", ast.Load()), [], []))
    namespace = {**backends.NUMPY.runtime(np.dtype(np.float64), None), "_locals": locals,
                 **{name: Contraction(subscripts) for name, subscripts in contractions.items()}}
    return run_source(ast.unparse(ast.fix_missing_locations(tree)), fn.name, namespace)(*args)


def _loops(statement: ast.Assign, values: dict) -> list[ast.stmt] | None:
    """A `_hoist`ed elementwise statement as loops over its result's axes, for the shapes in `values`.

    numba compiles `2 * Cbar * W2.T * A` to a loop over a broadcast, with a temporary for
    each operation and the broadcast worked out at every element: the article's elementwise
    statements at batch 1,000 took 11.3 us so, 3.6 us as loops. Each operand is read where
    it is: index 0 on its axes of length 1, no index on the axes it lacks (this signature's
    shapes; another signature with other lengths of 1 gets its own source). None where the
    statement is not elementwise float64 work over an array.
    """
    target = statement.targets[0].id
    result = values.get(target)
    if not (isinstance(result, np.ndarray) and result.ndim and result.dtype == np.float64
            and fusion.is_op(statement.value)):
        return None
    kernel = fusion.Kernel(statement.value)
    shape, rank = result.shape, result.ndim
    loop = [f"_i{k}" for k in range(rank)]
    reads, sizes = {}, {}
    for n, operand in enumerate(kernel.arguments):
        if not (isinstance(operand, ast.Name) and operand.id in values):
            return None
        name, dims = operand.id, np.shape(values[operand.id])
        axes = range(rank - len(dims), rank)
        if len(dims) > rank or any(d not in (1, shape[k]) for k, d in zip(axes, dims)):
            return None
        reads[f"a{n}"] = f"{name}[{', '.join('0' if d == 1 else loop[k] for k, d in zip(axes, dims))}]" \
            if dims else name
        for k, d in zip(axes, dims):
            if d != 1:
                sizes.setdefault(k, f"{name}.shape[{k - rank + len(dims)}]")
    if len(sizes) != sum(d != 1 for d in shape):
        return None
    lines = [f"{target} = np.empty(({', '.join(sizes.get(k, '1') for k in range(rank))},))"]
    for k in range(rank):
        lines.append("    " * k + f"for {loop[k]} in range({target}.shape[{k}]):")
    lines.append("    " * rank + f"{target}[{', '.join(loop)}] = {kernel.element(reads)}")
    return ast.parse("\n".join(lines)).body


def module_source(plan_source: str, contractions: dict[str, str],
                  values: dict | None = None) -> tuple[str, tuple[str, ...] | None] | str:
    """(the numba module's source, the result's keys in order or None for one array), or why not.

    `plan_source` is `python_source(plan, "_plan", standalone=False)`, where `_c3(x, y)` is
    the contraction `contractions["_c3"]` (einsum subscripts). Why not when it calls anything
    but numpy, the helpers above and contractions `broadcast_einsum` writes: abstract
    functions, `_arange` (whose shape numba cannot type), other contractions. With `values`
    (`values()`), elementwise statements are written as loops for their shapes.
    """
    tree = ast.parse(plan_source)
    fn = tree.body[0]
    if values is not None:
        _hoist(fn)
        fn.body = [line for statement in fn.body for line in
                   ((isinstance(statement, ast.Assign) and _loops(statement, values)) or [statement])]

    class Contractions(ast.NodeTransformer):
        def visit_Call(self, node):
            if (written := _max_keep_call(node)) is not None:
                return ast.parse(written, mode="eval").body
            if (nested := _single_axis_sums(node)) is not None:
                return self.generic_visit(nested)
            if isinstance(node.func, ast.Name) and node.func.id in contractions and \
                    all(isinstance(a, ast.Name) for a in node.args):
                written = broadcast_einsum(contractions[node.func.id], [a.id for a in node.args])
                if written is not None:
                    return ast.parse(written, mode="eval").body
            return self.generic_visit(node)
    Contractions().visit(fn)
    for node in ast.walk(fn):
        if isinstance(node, ast.Call):
            f = node.func
            method = isinstance(f, ast.Attribute) and f.attr in ("sum", "reshape", "transpose")  # and loops: range
            numpy = isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "np"
            if not (isinstance(f, ast.Name) and f.id in CALLABLE | {"range"} or method or numpy):
                return f"the plan calls {ast.unparse(f)}, which numba cannot compile"
    returned = fn.body[-1]
    keys = None
    if isinstance(returned.value, ast.Dict):
        keys = tuple(k.value for k in returned.value.keys)
        returned.value = ast.Tuple(returned.value.values, ast.Load())
    fn.decorator_list = [ast.parse('njit(error_model="numpy", cache=True)', mode="eval").body]
    return HELPERS + "\n\n" + ast.unparse(ast.fix_missing_locations(tree)) + "\n", keys


def _same(a):
    return a


def _runner(dispatcher, keys: tuple[str, ...] | None, converts: tuple):
    """The numba function called as the numpy one is: a dict by key, numbers as numpy gave them."""
    if keys is None:
        convert = converts[0]
        return dispatcher if convert is _same else (lambda *arrays: convert(dispatcher(*arrays)))
    if all(c is _same for c in converts):
        return lambda *arrays: dict(zip(keys, dispatcher(*arrays)))
    return lambda *arrays: {k: c(r) for k, c, r in zip(keys, converts, dispatcher(*arrays))}


def agrees(dispatcher, keys, args: list, expected):
    """The numba function as the plan's runner, if on `args` it gives what numpy gave; else why not.

    Same keys, types, shapes and dtypes (where numba returns a Python float for numpy's
    float64 or 0-d array, the runner converts it), and equal values up to rounding (numba
    sums in another order, and its exp and log may differ in the last bit).
    """
    try:
        got = dispatcher(*args)
    except Exception as exc:  # noqa: BLE001 - numba's reading of the code differs: stay numpy
        return f"numba raised {type(exc).__name__}"
    got = dict(zip(keys, got)) if keys is not None else {"": got}
    want = expected if keys is not None else {"": expected}
    if not isinstance(want, dict) or got.keys() != want.keys():
        return "the results differ in their keys"
    converts = []
    for k, w in want.items():
        g = got[k]
        convert = _same
        if isinstance(g, float) and type(w) is np.float64:
            convert = np.float64
        elif isinstance(g, float) and type(w) is np.ndarray and w.shape == () and w.dtype == np.float64:
            convert = np.array
        elif type(g) is not type(w) or g.shape != w.shape or g.dtype != w.dtype:
            return f"result {k!r} differs in type, shape or dtype"
        g, w = np.asarray(g), np.asarray(w)
        finite = np.abs(w[np.isfinite(w)])
        scale = float(finite.max()) if finite.size else 0.0
        if not np.allclose(g, w, rtol=1e-9, atol=1e-9 * scale, equal_nan=True):
            return f"result {k!r} differs from numpy's by more than rounding"
        converts.append(convert)
    return _runner(dispatcher, keys, tuple(converts))


def fastest(run, args: list, repeats: int = 5) -> float:
    """The least time of `repeats` calls of `run(*args)`, in seconds."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run(*args)
        best = min(best, time.perf_counter() - start)
    return best


def compile_whole(plan_source: str, contractions: dict[str, str], args: list, expected):
    """The plan as one numba function for the types of `args`, checked against `expected`; else why not."""
    made = module_source(plan_source, contractions, values(plan_source, contractions, args))
    if isinstance(made, str):
        return made
    source, keys = made
    import numba
    with _LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numba's advice ('@' is faster on contiguous arrays) is not the caller's
        try:
            dispatcher = fusion.load_module(source)._plan
            dispatcher.compile(tuple(numba.typeof(a) for a in args))
        except Exception as exc:  # noqa: BLE001 - a construct numba does not support: stay numpy
            return f"numba cannot compile it ({type(exc).__name__})"
        return agrees(dispatcher, keys, args, expected)
