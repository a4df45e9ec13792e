"""The façade: `Program` and `Derivation`, each stage computed lazily and cached."""

from __future__ import annotations

import warnings
from dataclasses import replace
from functools import cached_property
from pathlib import Path

import numpy as np
import sympy as sp

from . import shapes as shape_stage
from .adjoint import Backprop, backprop, on_path, path_count, with_statement
from .compiled import Compiled
from .deltas import IndexForm, contract_all
from .errors import EinmlpError, EinmlpWarning, NumericError, ShapeError, UnknownNameError, guarded
from .grad import RawDerivative, Step, differentiate, entry
from .lower import EinsumPlan, Lowerer, output
from .parse import parse_syntax
from .render import index_str
from .summation import check_program
from .textform import program_text, statement_text
from .symbolic import ESum, Model, Partial, build_model, tensor_set


class Program:
    r"""A parsed and checked program: `einmlp.parse(text)`.

    Examples:
        >>> prog = einmlp.parse("A[i,k] = X[i,j] W[j,k]\nL = A[i,k]^2")
        >>> prog.inputs, prog.targets
        (['X', 'W'], ['A', 'L'])
    """

    @guarded
    def __init__(self, text: str, name: str = "<string>"):
        self.text, self.name = text, name
        self.syntax = parse_syntax(text)
        self.checked = check_program(self.syntax)
        self.model = build_model(self.checked)
        for note in self.checked.notes:
            warnings.warn(note, EinmlpWarning, stacklevel=4)  # the caller of einmlp.parse or load

    def backprop(self, of: str) -> Backprop:
        """The adjoint of every statement `of` depends on, derived once and shared by every gradient of `of`."""
        cache = self.__dict__.setdefault("_backprops", {})
        if of not in cache:
            cache[of] = backprop(self.model, of, tuple(self.model.inputs))
        return cache[of]

    @property
    def warnings(self) -> list[str]:
        """What einmlp accepted but wants the user to look at (an abstract function near a built-in)."""
        return list(self.checked.notes)

    @property
    def inputs(self) -> list[str]:
        """Names used but never assigned, in order of first use."""
        return list(self.model.inputs)

    @property
    def targets(self) -> list[str]:
        """Names assigned by the program, in order."""
        return list(self.model.targets)

    @property
    def intermediates(self) -> list[str]:
        """Every assigned tensor, including the contractions einmlp named (as the article names B, C)."""
        return list(self.model.definitions)

    def _of(self, of: str | None) -> str:
        if of is None:
            return self.model.targets[-1]
        if of not in self.model.definitions:
            raise UnknownNameError(f"{of} is not a target of the program (targets: {', '.join(self.targets)})")
        return of

    def grad(self, wrt, of: str | None = None):
        """D of / d wrt, shaped `of.shape + wrt.shape`; a list of names derives them together."""
        of = self._of(of)
        if isinstance(wrt, (list, tuple)):
            return Gradients(self, of, tuple(wrt))
        return Derivation(self, of, wrt)

    def value_and_grad(self, wrt, of: str | None = None):
        """The value of `of` and its gradients, compiled together: `.compile()(**arrays) -> (value, {name: grad})`."""
        from .training import ValueAndGrad
        return ValueAndGrad(self, self._of(of), (wrt,) if isinstance(wrt, str) else tuple(wrt))

    def hessian(self, wrt: str, of: str | None = None) -> "Derivation":
        """d^2 of / d wrt^2, shaped `wrt.shape + wrt.shape` for a scalar `of`."""
        return Derivation(self, self._of(of), wrt, base=self.grad(wrt, of))

    @guarded
    def compile(self, of: str | None = None, functions: dict | None = None, backend: str | None = None) -> Compiled:
        """The forward value of `of` (default: the last statement) as `fn(**arrays)`.

        `backend` ("numpy", "torch", "jax", "dask", "cupy") pins the array library; by
        default each call computes with the library of the arrays it is given.
        """
        of = self._of(of)
        lowerer = Lowerer.returning(self.model, self.model, of)
        lowerer.need(of)
        plan = lowerer.plan({"": lowerer.var_of(of)})
        return Compiled(self.model, plan, f"forward_{of}", functions, backend=backend)

    @property
    def text_form(self) -> str:
        """The program in the bracket spelling: how einmlp read subscripts, einsum specs and matrix notation."""
        return program_text(self.syntax)

    @property
    def declarations(self) -> dict[str, tuple]:
        """Declared dimensions by name (`X is B x D` gives ('B', 'D'); `s is scalar` gives ())."""
        return {d.name: d.dims for d in self.syntax.declarations}

    @property
    def declared_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shapes the declarations give in numbers (`X is 10 x 3`): the default shapes."""
        return {name: dims for name, dims in self.declarations.items()
                if all(isinstance(d, int) for d in dims) and name in self.model.inputs}

    def example_arrays(self, seed: int = 0, **shapes) -> dict[str, np.ndarray]:
        """Random standard-normal arrays for every input, shaped by the declarations (or `shapes`)."""
        shapes = {**self.declared_shapes, **{k: tuple(v) for k, v in shapes.items()}}
        missing = [n for n in self.inputs if n not in shapes and self.model.inputs[n] > 0]
        if missing:
            raise ShapeError(f"no numeric shape for {', '.join(missing)}: declare "
                             f"{'them' if len(missing) > 1 else 'it'} (e.g. `{missing[0]} is 10 x 3`) "
                             "or pass the shapes")
        shape_stage.bind(self.model, {n: shapes.get(n, ()) for n in self.inputs})
        rng = np.random.default_rng(seed)
        return {n: rng.standard_normal(shapes.get(n, ())) for n in self.inputs}

    @guarded
    def shapes(self, **input_shapes) -> shape_stage.ShapeTable:
        """The dimension algebra of each statement for the given input shapes (default: the declared ones).

        A str, and a table in notebooks. A statement in matrix notation also shows its own
        algebra, as seed 000 writes it, and how einmlp read it.
        """
        given = {**self.declared_shapes, **{k: tuple(v) for k, v in input_shapes.items()}}
        shapes = shape_stage.bind(self.model, given)
        rows = []
        for checked in self.checked.statements:
            st = checked.statement
            details = list(st.algebra)
            if statement_text(st) != st.source:
                details.append(f"read as {statement_text(st)}")
            algebra = shape_stage.algebra(st.expr, shapes)
            details.append(f"{algebra} = {shape_stage.dims(shapes[st.name])}")
            rows.append((st.source, details))
        return shape_stage.ShapeTable(rows)

    def _repr_latex_(self) -> str:
        from .latex import program_latex
        return "$$" + program_latex(self) + "$$"

    def __repr__(self) -> str:
        return f"<einmlp.Program {self.name}: inputs {self.inputs}, targets {self.targets}>"


# The article's flat chain (every link expanded, then the deltas contracted) is shown where
# it stays small; beyond these, a derivative reads from the backprop adjoints instead.
FLAT_PATHS = 2        # chains of statements from `of` down to `wrt` (2^L for L residual blocks)
FLAT_STATEMENTS = 8   # statements on those chains


def _flat_is_small(model: Model, of: str, wrt: str) -> bool:
    path = on_path(model, of, (wrt,))
    return path_count(model, of, wrt) <= FLAT_PATHS and len(path) <= FLAT_STATEMENTS and \
        not _divides_by_a_sum(model, path)


def _divides_by_a_sum(model: Model, names) -> bool:
    """Whether a statement among `names` divides by a sum (a softmax, a norm) that is read other than by its log.

    Its flat derivative is a difference of products that cancel where the softmax saturates:
    dL/dWq of attention with logits of 1e300 came out -6e287, the rounding of two terms of
    1e300 multiplied through, where the adjoints give P (Pbar - sum P Pbar) = 0 exactly. A
    softmax read only by its log (cross-entropy) stays flat: there the quotient cancels
    symbolically, into the textbook X.T @ (P - T).
    """
    sums = {n for n, d in model.definitions.items() if d.expr.has(ESum)}
    path = set(names) & set(model.definitions)
    for name in path:
        if not any(p.exp.is_negative and (p.base.has(ESum) or tensor_set(p.base) & sums)
                   for p in model.definitions[name].expr.atoms(sp.Pow)):
            continue
        for reader in path - {name}:
            outside_logs = model.definitions[reader].expr.replace(
                lambda e, name=name: isinstance(e, sp.log) and name in tensor_set(e), lambda e: sp.S.One)
            if name in tensor_set(outside_logs):
                return True
    return False


class Derivation:
    """d of / d wrt, derived symbolically; prints as its index form.

    `mode` is "flat" (the article's chain, every link expanded) or "adjoint" (reverse mode:
    the gradient reads from one adjoint per statement); by default flat where it stays small.
    """

    @guarded
    def __init__(self, program: Program, of: str, wrt: str, base: "Derivation | None" = None,
                 mode: str | None = None, backprop: Backprop | None = None):
        self.program, self.of, self.wrt, self.base = program, of, wrt, base
        if wrt not in program.model.inputs:
            raise UnknownNameError(f"cannot differentiate with respect to {wrt}: it is not an input of the "
                                   f"program (inputs: {', '.join(program.inputs)})")
        if mode not in (None, "flat", "adjoint"):
            raise EinmlpError(f"mode must be 'flat' or 'adjoint', not {mode!r}")
        self.order = 1 if base is None else base.order + 1
        if mode is None and base is not None:
            mode = base.mode
        if mode is None:
            mode = "flat" if _flat_is_small(program.model, of, wrt) else "adjoint"
        self.mode = mode
        self._backprop = backprop
        if self.form.expr().has(sp.nan, sp.zoo):  # derive now, so errors surface at grad() time
            raise NumericError(f"{self.label} is not defined: it comes out as {self.index_form} "
                               "(a power of 0, or a division by 0, in the program)")

    @cached_property
    def backprop(self) -> Backprop:
        """The adjoints this derivative reads from (shared with the other gradients of `grad([...])`).

        A second derivative backpropagates again: the first derivative becomes one more
        statement of the model that holds its adjoints (reverse over reverse).
        """
        if self._backprop is not None:
            return self._backprop
        if self.base is None:
            return self.program.backprop(self.of)
        # the adjoints as derived, not as inlined for running: a chain's inlined adjoints grow with its depth
        base_model = self.base.backprop.derived if self.base.mode == "adjoint" else self.base.model
        model, name = with_statement(base_model, "d" + self.base.of + "_d" + self.base.wrt, self.base.form,
                                     self.base.of, self.base.wrt)
        return backprop(model, name, (self.wrt,))

    @property
    def model(self) -> Model:
        """The model the index form refers to: the program's, plus the adjoints it reads."""
        if self.mode == "adjoint":
            return self.backprop.model
        return self.program.model if self.base is None else self.base.model

    @cached_property
    def raw(self) -> RawDerivative:
        if self.base is None:
            return differentiate(self.model, self.of, self.wrt)
        form = self.base.form
        return differentiate(self.model, self.base.label, self.wrt, of_expr=form.expr(), of_free=form.free)

    @property
    def lhs(self) -> sp.Expr:
        """The derivative d of[..] / d wrt[..], as the steps title it."""
        if self.base is not None:  # a second derivative: d/dw of the first one, not of a name "dL/dw"
            own = self.free[len(self.base.free):]
            wrt = self.raw.steps[0].lhs.args[1] if self.mode == "flat" else entry(self.wrt, own)
            return Partial(self.base.lhs, wrt)
        if self.mode == "flat":
            return self.raw.steps[0].lhs
        of_indices = self.model.definitions[self.of].indices
        return Partial(entry(self.of, of_indices), entry(self.wrt, self.free[len(of_indices):]))

    @property
    def label(self) -> str:
        return f"d{self.of}/d{self.wrt}" if self.base is None else f"d{self.base.label}/d{self.wrt}"

    @cached_property
    def _contracted(self) -> tuple[IndexForm, list[Step], sp.Expr]:
        model = self.model
        elementwise = {n: d for n, d in model.definitions.items() if not d.expr.has(ESum) and d.indices}
        return contract_all(self.raw.expr, self.raw.free, self.raw.names, elementwise)

    @property
    def form(self) -> IndexForm:
        """The contracted index form: terms over the free indices."""
        return self.backprop.adjoints[self.wrt].form if self.mode == "adjoint" else self._contracted[0]

    @property
    def free(self) -> tuple:
        return self.form.free

    @property
    def index_form(self) -> str:
        """The derivative in index notation, e.g. -2*Ytilde[i,0]*f2'(C[i,0])*W2[n,0]*f1'(A[i,n])*X[i,m]."""
        return index_str(self.form.expr()) if self.form.terms else "0"

    @cached_property
    @guarded
    def matrix(self):
        from .matrix import matrix_form
        return matrix_form(self)

    @property
    def matrix_form(self) -> str:
        """The derivative with @, .T and *, or einsum notation where no matrix form exists."""
        return self.matrix.text

    @cached_property
    @guarded
    def steps(self) -> list[Step]:
        """The article's steps: chain rule, each link, the product of deltas, the contraction, matrix form.

        In adjoint mode: the adjoint of each statement, as backpropagation computes them, then
        the gradient read from them.
        """
        lhs = self.lhs
        if self.mode == "adjoint":
            steps = self.backprop.steps(self.wrt)
            steps.append(Step("Gradient from the adjoints", lhs, self.form.expr()))
            return steps + self.matrix.steps(lhs)
        raw, (_, contraction, product) = self.raw, self._contracted
        steps = [replace(s, lhs=lhs) if s.lhs == raw.steps[0].lhs else s for s in raw.steps]
        steps.append(Step("Product of all deltas", lhs, product))
        steps.extend(Step(s.title, lhs, s.expr, s.renames) for s in contraction)
        steps.extend(self.matrix.steps(lhs))
        return steps

    @guarded
    def latex(self, document: bool = False) -> str:
        """The steps as an align* body, or a whole LaTeX document."""
        from .latex import derivation_latex
        return derivation_latex(self, whole=document)

    def _repr_latex_(self) -> str:
        """The steps for a notebook: one $$ aligned block in what MathJax 3 understands."""
        from .latex import notebook_latex
        return notebook_latex(self.steps)

    def axes(self) -> dict:
        """Free index -> (tensor, axis) giving its length: `of`'s axes first, then each `wrt`'s."""
        rank = self.program.model.inputs[self.wrt]
        own = self.free[len(self.free) - rank:] if rank else ()
        if self.base is not None:
            bindings = self.base.axes()
        else:
            of_indices = self.program.model.definitions[self.of].indices
            bindings = {i: (self.of, a) for a, i in enumerate(of_indices) if i.is_Symbol}
        bindings.update({i: (self.wrt, a) for a, i in enumerate(own) if i.is_Symbol})
        return bindings

    def lower(self, lowerer: Lowerer, name: str) -> str:
        """Emit this derivative into a shared plan; returns the variable that holds it."""
        bindings = self.axes()
        form = self.backprop.lowering[self.wrt] if self.mode == "adjoint" else self.form
        return lowerer.lower(form, name, bindings, comment=f"{self.label} = {self.index_form}")

    @cached_property
    @guarded
    def plan(self) -> EinsumPlan:
        lowerer = Lowerer.returning(self.model, self.program.model, self.of)
        return lowerer.plan({"": self.lower(lowerer, output(self.wrt))})

    @guarded
    def compile(self, functions: dict | None = None, backend: str | None = None) -> Compiled:
        """The derivative as `fn(**arrays)`, an array shaped `of.shape + wrt.shape` (backends: see Program.compile)."""
        key = (backend, *sorted((functions or {}).items(), key=lambda kv: kv[0]))
        cache = self.__dict__.setdefault("_compile_cache", {})
        if key not in cache:
            cache[key] = Compiled(self.model, self.plan, "d" + self.of + "_d" + self.wrt, functions,
                                  checks=(self.of, self.wrt), backend=backend)
        return cache[key]

    def differentiated(self, functions: dict | None = None):
        """The compiled function this derivation differentiates (for checks)."""
        if self.base is None:
            return self.program.compile(self.of, functions)
        return self.base.compile(functions)

    def __str__(self) -> str:
        return self.index_form

    def __repr__(self) -> str:
        return f"<Derivation {self.label}[{','.join(map(str, self.free))}] = {self.index_form}>"


class Gradients:
    """Several derivatives of one output, compiled into one function that shares the work."""

    @guarded
    def __init__(self, program: Program, of: str, wrt: tuple[str, ...]):
        if not wrt:
            raise EinmlpError("grad needs at least one name to differentiate with respect to")
        self.program, self.of, self.wrt = program, of, wrt
        for w in wrt:
            if w not in program.model.inputs:
                raise UnknownNameError(f"cannot differentiate with respect to {w}: it is not an input of the "
                                       f"program (inputs: {', '.join(program.inputs)})")
        self.backprop = program.backprop(of)
        self._derivations: dict[str, Derivation] = {}

    @property
    def derivations(self) -> dict[str, Derivation]:
        """Each gradient as a Derivation, derived for display when first asked for."""
        return {w: self[w] for w in self.wrt}

    def __getitem__(self, name: str) -> Derivation:
        if name not in self.wrt:
            raise UnknownNameError(f"{name} is not one of the gradients asked for ({', '.join(self.wrt)})")
        if name not in self._derivations:
            self._derivations[name] = Derivation(self.program, self.of, name, backprop=self.backprop)
        return self._derivations[name]

    def __iter__(self):
        return iter(self.derivations.values())

    @cached_property
    @guarded
    def plan(self) -> EinsumPlan:
        """Every gradient read from the shared adjoints: each adjoint is computed once."""
        return self.plan_with_value(None)

    def plan_with_value(self, key: str | None) -> EinsumPlan:
        """The gradients' plan, with the value of `of` as one more output under `key` (None: without)."""
        lowerer = Lowerer.returning(self.backprop.model, self.program.model, self.of)
        grads = {w: Derivation(self.program, self.of, w, mode="adjoint", backprop=self.backprop)
                 .lower(lowerer, output(w)) for w in dict.fromkeys(self.wrt)}
        value = {} if key is None else {key: lowerer.var_of(self.of)}  # computed on the way to the gradients
        return lowerer.plan({**value, **grads})

    @guarded
    def compile(self, functions: dict | None = None, backend: str | None = None) -> Compiled:
        """One function returning {name: gradient}, computing shared work once (backends: see Program.compile)."""
        return Compiled(self.backprop.model, self.plan, "grads_" + self.of, functions, checks=(self.of, *self.wrt),
                        backend=backend)

    def differentiated(self, functions: dict | None = None):
        return self.program.compile(self.of, functions)

    @property
    def index_form(self) -> dict[str, str]:
        return {w: d.index_form for w, d in self.derivations.items()}

    def _repr_latex_(self) -> str:
        from .latex import gradients_latex
        return gradients_latex(list(self.derivations.values()))

    def __repr__(self) -> str:
        return f"<Gradients d{self.of}/d({', '.join(self.wrt)})>"

    @property
    def matrix_form(self) -> dict[str, str]:
        return {w: d.matrix_form for w, d in self.derivations.items()}


def parse(text: str) -> Program:
    """Parse and check a program in einmlp's index notation."""
    return Program(text)


def load(path) -> Program:
    """Parse and check a `.ein` file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise EinmlpError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise EinmlpError(f"{path} is not UTF-8 text") from None
    return Program(text, str(path))
