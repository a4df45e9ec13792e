"""Compile an `EinsumPlan` into a Python function, and print it as standalone source.

Everything that depends only on the program is done once (the source, its compilation);
everything that depends on shapes is done once per shape signature (the shape check, the
opt_einsum contraction paths). The returned callable only does arithmetic.
"""

from __future__ import annotations

import ast
import inspect
import re
from typing import Callable

import numpy as np
import opt_einsum as oe

from . import blas, fusion
from .backends import _dsigmoid, _ipow, _sigmoid, _softplus
from .errors import EinmlpError, UnknownNameError
from .functions import near_builtin
from .lower import EinsumPlan


class Contraction:
    """One einsum, planned with opt_einsum once per shape signature, then called directly."""

    def __init__(self, subscripts: str):
        self.subscripts = subscripts
        self.plans: dict[tuple, Callable] = {}

    def __call__(self, *arrays):
        key = tuple(a.shape for a in arrays)
        plan = self.plans.get(key)
        if plan is None:
            plan = self.plans[key] = oe.contract_expression(self.subscripts, *key)
        return plan(*arrays)

    def __repr__(self) -> str:
        return f"Contraction({self.subscripts!r})"


def _full(shape, value):
    return np.broadcast_to(value, shape).copy() if np.ndim(value) else np.full(shape, float(value))


def _arange(size, axis, ndim):
    return np.arange(size).reshape([size if k == axis else 1 for k in range(ndim)])


def _equal(a, b):
    return np.equal(a, b).astype(float)


def _fresh(a):
    return a.copy()


# the standalone source carries its numpy helpers, read from this module (compiled functions
# get theirs, for their float type and device, from backends.py)
_HELPERS = "\n\n".join(inspect.getsource(f) for f in (_full, _arange, _equal, _ipow, _sigmoid, _dsigmoid,
                                                           _softplus, _fresh))


_PRINTABLE = re.compile(r"[ -~]*")  # one line of printable ASCII


def python_source(plan: EinsumPlan, name: str = "compute", *, standalone: bool = True,
                  einsum: bool = False) -> str:
    """The plan as a Python function; standalone source imports numpy and opt_einsum itself.

    Only standalone source carries comments (einmlp's own index notation, one printable line
    each); the source that `compile_plan` executes has none. `einsum=True` writes every
    contraction as `np.einsum(...)` (what `derive --format einsum` prints: runnable with
    numpy alone, where the compiled function calls BLAS directly).
    """
    args = [plan.variables[n] for n in plan.inputs] + (["_functions"] if plan.abstract else [])
    lines = [f"def {name}({', '.join(args)}):"]
    for k, eq in enumerate(plan.equations):
        if standalone and eq.comment and _PRINTABLE.fullmatch(eq.comment):
            lines.append(f"    # {eq.comment}")
        if eq.op == "einsum" and einsum:
            lines.append(f"    {eq.out} = np.einsum('{eq.text}', {', '.join(eq.args)})")
        elif eq.op == "einsum" and eq.code:
            lines.append(f"    {eq.out} = {eq.code}")
        elif eq.op == "einsum":
            call = f"oe.contract('{eq.text}', " if standalone else f"_c{k}("
            lines.append(f"    {eq.out} = {call}{', '.join(eq.args)})")
        elif einsum and eq.spec:
            lines.append(f"    {eq.out} = {eq.spec}")
        else:
            lines.append(f"    {eq.out} = {eq.text}")
    borrowed, returned = _borrowed(plan), set()
    outputs = {}
    for key, var in plan.outputs.items():  # no result shares memory with an input or another result
        outputs[key] = f"_fresh({var})" if var in borrowed or var in returned else var
        returned.add(var)
    lines.append("    return " + (outputs[""] if len(outputs) == 1 and "" in outputs
                                   else "{" + ", ".join(f"{k!r}: {v}" for k, v in outputs.items()) + "}"))
    body = "\n".join(lines) + "\n"
    if standalone:
        imports = "import numpy as np\n" + ("" if einsum else "import opt_einsum as oe\n")
        return imports + "\n\n" + _HELPERS + "\n\n" + body
    return body


_VIEWS = {"T", "transpose", "reshape", "broadcast_to", "squeeze", "expand_dims", "swapaxes", "diagonal"}


def _is_view(expression: str) -> bool:
    """Whether numpy may evaluate `expression` to a view of the arrays it names: x, x.T, x[:, None]."""
    for node in ast.walk(ast.parse(expression, mode="eval").body):
        if isinstance(node, ast.Attribute) and node.attr not in _VIEWS | {"shape"} and not (
                isinstance(node.value, ast.Name) and node.value.id == "np"):
            return False
        if isinstance(node, ast.UnaryOp) and not isinstance(node.operand, ast.Constant):  # -x is new; x[-1] not
            return False
        if not isinstance(node, (ast.Name, ast.Attribute, ast.Subscript, ast.Slice, ast.Constant, ast.Tuple,
                                 ast.Call, ast.Load, ast.UnaryOp, ast.USub)):
            return False
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Attribute) and node.func.attr in _VIEWS):
            return False
    return True


def _borrowed(plan: EinsumPlan) -> set[str]:
    """The variables that may hold an input's memory: the inputs, and views of them.

    Returned as they are, `L = x[i] y[i]` would give y itself as dL/dx, and `g *= lr` on the
    gradient would change the caller's y.
    """
    borrowed = {plan.variables.get(n, n) for n in plan.inputs}
    for eq in plan.equations:
        if eq.op == "einsum":
            view = _is_view(eq.code) if eq.code else len(eq.args) == 1  # one operand: einsum may return a view
        else:
            view = _is_view(eq.text)
        if view and any(re.search(rf"\b{re.escape(name)}\b", eq.code or eq.text) or name in eq.args
                        for name in borrowed):
            borrowed.add(eq.out)
    return borrowed


def _with_deletes(source: str, keep: set[str]) -> str:
    """`source` with each temporary deleted after the statement that reads it last.

    Freeing temporaries as soon as they are dead keeps the peak memory of all gradients of a
    deep network close to that of backprop by hand. Reads are found in the final source, so
    this also holds after fusion has moved reads later.
    """
    tree = ast.parse(source)
    fn = tree.body[0]
    assigned = {s.targets[0].id for s in fn.body if isinstance(s, ast.Assign)} - keep
    last: dict[str, int] = {}
    for k, stmt in enumerate(fn.body):
        for node in ast.walk(stmt.value):
            if isinstance(node, ast.Name) and node.id in assigned:
                last[node.id] = k
    body = []
    for k, stmt in enumerate(fn.body):
        body.append(stmt)
        dead = sorted(n for n, at in last.items() if at == k)
        if dead and not isinstance(stmt, ast.Return):
            body.append(ast.Delete([ast.Name(n, ast.Del()) for n in dead]))
    fn.body = body
    return ast.unparse(ast.fix_missing_locations(tree)) + "\n"


def executed_source(plan: EinsumPlan, fused: bool = False, rewrite=None) -> tuple[str, str | None] | None:
    """The source `compile_plan` runs, and the source of its kernels' module (None unfused).

    `fused=True` gives the code for large numpy arrays: the elementwise expressions as numba
    kernels (fusion.py) and the matrix products through `_mm` (blas.py), as far as numba and
    MKL are installed; None if neither changes the plan. `rewrite` is a backend's own pass over
    the source (backends.Jax.rewrite).
    """
    source, module = python_source(plan, "_compute", standalone=False), None
    if fused:
        rewritten = fusion.fuse(source, set(plan.outputs.values())) if fusion.available() else None
        if rewritten is not None:
            source, module = rewritten
        routed = blas.routed(source) if blas.available() else None
        if rewritten is None and routed is None:
            return None
        source = routed or source
    if rewrite is not None:  # a backend's own pass (backends.Jax.rewrite)
        source = rewrite(source) or source
    return _with_deletes(source, set(plan.outputs.values())), module


def compile_plan(plan: EinsumPlan, fused: bool = False, rewrite=None) -> Callable[[dict], Callable] | None:
    """The plan compiled once, as `make(runtime)`: its function over the globals `runtime`.

    Each backend (and float type) runs the same code object with its own `np` and helpers.
    `fused=True` compiles the code for large numpy arrays, None if it is the plain code;
    `rewrite`, a backend's pass over the source (executed_source).
    """
    # The source is generated from the checked plan: every name in it is an identifier the
    # parser accepted (mangled away from Python's keywords) or one of ours, every number is
    # printed from a sympy number, and it has no comments. No user text reaches it.
    try:
        executed = executed_source(plan, fused, rewrite)
        if executed is None:
            return None
        source, module = executed
        code = compile(source, "<einmlp>", "exec")
    except (SyntaxError, RecursionError, MemoryError):  # e.g. more than 200 nested parentheses
        raise EinmlpError("the generated code is nested too deeply for Python to compile; "
                          "write some nested functions as statements") from None
    contractions = {f"_c{k}": Contraction(eq.text) for k, eq in enumerate(plan.equations)
                    if eq.op == "einsum" and not eq.code}
    kernels = fusion.load_kernels(module) if module else {}
    if fused and (products := blas.products()) is not None:
        kernels["_mm"] = products

    def make(runtime: dict) -> Callable:
        namespace = {**runtime, **contractions, **kernels}
        exec(code, namespace)  # safe: generated from the checked plan
        return namespace["_compute"]
    return make


def run_source(source: str, name: str, namespace: dict) -> Callable:
    """The function `name` of generated `source`, over the globals `namespace`.

    `source` is einmlp's own, printed from a checked plan (as `compile_plan`'s): identifiers
    the parser accepted or einmlp's, numbers it printed, no comments.
    """
    code = compile(source, "<einmlp>", "exec")
    exec(code, namespace)  # safe: generated from the checked plan
    return namespace[name]


def check_functions(plan: EinsumPlan, functions: dict | None) -> dict:
    """The callables for the plan's abstract functions; a clear error names any missing."""
    functions = dict(functions or {})
    missing = [f for f in plan.abstract if f not in functions]
    if missing:
        plural = len(missing) > 1
        notes = [f"did you mean {near}?" for f in dict.fromkeys(m.rstrip("'") for m in missing)
                 if (near := near_builtin(f))]
        raise UnknownNameError(f"function{'s' * plural} {', '.join(missing)} {'are' if plural else 'is'} abstract: "
                               f"define {'them' if plural else 'it'} in the program, e.g. f(x) = x^2, or pass "
                               "compile(functions={name: callable}) "
                               f"for {'each of them' if plural else 'it'}{''.join(' (' + n + ')' for n in notes)}")
    return functions
