"""LaTeX for derivations.

Display names (Greek, hats, tildes, layer superscripts), steps as `align*` rows, and whole
documents that a plain `pdflatex` compiles.
"""

from __future__ import annotations

import re

from sympy.printing.latex import LatexPrinter

from .functions import UserFunction
from .linebreak import BINARY, TEXT_WIDTH, break_lines, width
from .symbolic import Partial

GREEK = {"alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda",
         "mu", "nu", "xi", "pi", "rho", "sigma", "tau", "upsilon", "phi", "chi", "psi", "omega",
         "Gamma", "Delta", "Theta", "Lambda", "Xi", "Pi", "Sigma", "Upsilon", "Phi", "Psi", "Omega"}
OPERATORS = {"exp": r"\exp", "log": r"\log", "tanh": r"\tanh", "sin": r"\sin", "cos": r"\cos",
             "sigmoid": r"\operatorname{sigmoid}", "relu": r"\operatorname{relu}",
             "softplus": r"\operatorname{softplus}", "step": r"\operatorname{step}", "sign": r"\operatorname{sign}"}


def escape(text: str) -> str:
    """Plain text made safe for LaTeX text mode."""
    table = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
             "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
             "<": r"\textless{}", ">": r"\textgreater{}"}
    return "".join(table.get(c, c) for c in text)


def _base(name: str) -> str:
    if name in GREEK:
        return "\\" + name
    if len(name) == 1:
        return name
    return r"\mathrm{" + escape(name) + "}"


def display(name: str) -> str:
    r"""A tensor's display name: Delta -> \Delta, Yhat -> \hat{Y}, Ytilde -> \widetilde{Y}, W1 -> W^{(1)}.

    An adjoint's: Cbar -> \bar{C}.
    """
    match = re.fullmatch(r"(.*?[^0-9])([0-9]+)", name)
    stem, layer = (match.group(1), match.group(2)) if match else (name, "")
    if stem.endswith("bar") and len(stem) > 3:  # an adjoint: Cbar -> \bar{C}
        body = r"\bar{" + display(stem[:-3]) + "}"
    elif stem.endswith("hat") and len(stem) > 3:
        body = r"\hat{" + display(stem[:-3]) + "}"
    elif stem.endswith("tilde") and len(stem) > 5:
        body = r"\widetilde{" + display(stem[:-5]) + "}"
    else:
        body = _base(stem)
    return body + (f"^{{({layer})}}" if layer else "")


def display_index(name: str) -> str:
    r"""An index name: mu -> \mu, k2 -> k_{2}."""
    match = re.fullmatch(r"(.*?[^0-9'])([0-9]+)('*)", name)
    if match:
        return _base(match.group(1)) + "_{" + match.group(2) + "}" + match.group(3)
    primes = len(name) - len(name.rstrip("'"))
    return _base(name.rstrip("'")) + "'" * primes


def display_function(name: str) -> str:
    r"""f1 -> f_{1}, f1' -> f_{1}', tanh -> \tanh."""
    primes = len(name) - len(name.rstrip("'"))
    root = name.rstrip("'")
    if root in OPERATORS:
        return OPERATORS[root] + "'" * primes
    match = re.fullmatch(r"(.*?[^0-9])([0-9]+)", root)
    body = _base(match.group(1)) + "_{" + match.group(2) + "}" if match else _base(root)
    return body + "'" * primes


class IndexLatexPrinter(LatexPrinter):
    """sympy's LaTeX printer with einmlp's display names and Einstein (implicit) sums."""

    printmethod = "_einmlp_latex"

    def _print_Indexed(self, expr):
        indices = ",".join(self._print(i) for i in expr.indices)
        return f"{{{display(expr.base.label.name)}_{{{indices}}}}}"

    def _print_Symbol(self, expr, style="plain"):
        return display_index(expr.name) if expr.is_integer else "{" + display(expr.name) + "}"

    def _print_KroneckerDelta(self, expr, exp=None):
        return rf"\delta_{{{self._print(expr.args[0])},{self._print(expr.args[1])}}}"

    def _print_ESum(self, expr):
        return self._print(expr.body)

    def _print_Extent(self, expr):
        return f"N_{{{display_index(expr.label)}}}"

    def _print_Partial(self, expr):
        r"""The fraction d of / d w; a second derivative as one, \frac{\partial^{2} L}{\partial w \partial v}."""
        of, wrts = expr, []
        while isinstance(of, Partial):
            of, wrts = of.args[0], [of.args[1], *wrts]
        order = f"^{{{len(wrts)}}}" if len(wrts) > 1 else ""
        below = " ".join(rf"\partial {self._print(w)}" for w in wrts)
        return rf"\frac{{\partial{order} {self._print(of)}}}{{{below}}}"

    def _print_Leaf(self, expr):
        name = display(expr.name)
        if "^" in name:  # a layer superscript: braced, so a power of W1 is {W^{(1)}}^{2}
            name = "{" + name + "}"
        return "{" + name + r"^{\top}}" if expr.transposed else name

    def _print_Function(self, expr, exp=None):
        name = expr.label() if isinstance(expr, UserFunction) else type(expr).__name__
        inner = self._print(expr.args[0])
        text = rf"{display_function(name)}\left({inner}\right)"
        return f"{text}^{{{exp}}}" if exp else text

    _print_sigmoid = _print_relu = _print_softplus = _print_step = _print_Function


def _repeated(body, index) -> bool:
    """Whether `index` shows in two factors of `body`, so that Einstein notation already says it is summed."""
    return body.is_Mul and sum(index in factor.free_symbols for factor in body.args) >= 2


class ListingLatexPrinter(IndexLatexPrinter):
    r"""For program listings: a sum that no repeated index shows is written out, `\sum_{i}`."""

    def _print_ESum(self, expr):
        body = self._print(expr.body)
        hidden = [i for i in expr.indices if not _repeated(expr.body, i)]
        if not hidden:
            return body
        if expr.body.is_Add or expr.body.could_extract_minus_sign():
            body = rf"\left({body}\right)"
        return rf"\sum_{{{','.join(display_index(i.name) for i in hidden)}}} {body}"


def to_latex(expr) -> str:
    """LaTeX of an index expression (or a matrix-form string, escaped)."""
    if isinstance(expr, str):
        return r"\texttt{" + escape(expr) + "}"
    from .symbolic import ESum
    implicit = expr.replace(lambda e: isinstance(e, ESum), lambda e: e.body)
    return IndexLatexPrinter({"mul_symbol": None}).doprint(implicit)


def _title(step) -> str:
    text = escape(step.title) + (f" ${display(step.subject)}$" if step.subject else "")
    if step.renames:
        text += ": " + ", ".join(f"${display_index(a)} \\to {display_index(b)}$" for a, b in step.renames)
    return text


def _lhs(step) -> str:
    return display(step.lhs) if isinstance(step.lhs, str) else to_latex(step.lhs)


def aligned_rows(lhs: str, rhs: str, lhs_width: float | None = None, margin: float = 0.88) -> str:
    r"""`lhs &= rhs` as align rows, the right-hand side continued on `&\quad` rows where it is too wide.

    `lhs_width` is the widest left-hand side of the alignment (all share one column); `margin`
    the part of the room that the width estimate may fill.
    """
    room = margin * (TEXT_WIDTH - (width(lhs) if lhs_width is None else lhs_width)) - 15.0
    first, *rest = break_lines(rhs, room)
    more = "".join(" \\\\\n&\\quad " + ("{}" if line.startswith(BINARY) else "") + line for line in rest)
    return f"{lhs} &= {first}{more}"


def equation_latex(step, lhs_width: float | None = None) -> str:
    """One step's equation, `lhs &= rhs`, for align* (continued on more rows where it is long)."""
    rhs = step.latex_expr if step.latex_expr is not None else to_latex(step.expr)
    return aligned_rows(_lhs(step), rhs, lhs_width)


def steps_latex(steps) -> str:
    """The steps as an align* body, a title above each equation."""
    widest = max((width(_lhs(step)) for step in steps), default=0.0)
    rows = [rf"\intertext{{\textbf{{{_title(step)}}}}}" + "\n" + equation_latex(step, widest) for step in steps]
    return " \\\\\n".join(rows)


def document(title: str, body: str, intro: str = "", outro: str = "") -> str:
    """A whole LaTeX document around an align* body; compiles with texlive-latex-base.

    `title` is LaTeX (math allowed); `intro` and `outro` are text before and after the body.
    """
    return "\n".join([
        r"\documentclass[11pt]{article}",
        r"\usepackage{amsmath}",
        r"\allowdisplaybreaks",
        r"\setlength{\textwidth}{16cm}\setlength{\oddsidemargin}{0cm}",
        r"\begin{document}",
        r"\section*{" + title + "}",
        intro,
        r"\begin{align*}",
        body,
        r"\end{align*}",
        *[outro] * bool(outro),
        r"\end{document}",
        ""])


def derivation_latex(derivation, *, whole: bool = False) -> str:
    """align* body of the steps, or a whole document with `whole=True`."""
    body = steps_latex(derivation.steps)
    if not whole:
        return body
    intro = _intro(derivation.program)
    from pathlib import Path
    title = "$" + to_latex(derivation.lhs) + "$ for " + escape(Path(derivation.program.name).name)
    return document(title, body, intro, _outro([derivation]))


def program_latex(program) -> str:
    """The program's statements as an aligned array, every sum visible (repeated indices, or a written sum)."""
    rows = []
    listing = ListingLatexPrinter({"mul_symbol": None})
    for d in program.model.definitions.values():
        rows.append(f"{to_latex(d.lhs)} &= {listing.doprint(d.expr)}")
    return r"\begin{aligned}" + r" \\ ".join(rows) + r"\end{aligned}"


# dimension names (`X is B x D`) stand in as numbers no program uses, and are named back in the text
_STAND_IN = 7_000_003
_ALGEBRA = re.compile(r"\[([^\]]*)\]|sum\[([^\]]*)\]|([A-Za-z_][A-Za-z0-9_']*)(\()?|\^([0-9.]+)")


def _algebra_latex(text: str) -> str:
    r"""`f([10 x 4] [4 x 1]) = []` as `f\left([10 \times 4]\,[4 \times 1]\right) = \text{scalar}`."""
    def one(match):
        box, summed, name, call, power = match.groups()
        if box is not None:
            return "[" + r" \times ".join(box.split(" x ")) + "]" if box else r"\text{scalar}"
        if summed is not None:
            return rf"\sum_{{{','.join(display_index(i) for i in summed.split(','))}}}"
        if name is not None:
            return display_function(name) + "(" if call else "{" + display(name) + "}"
        return "^{" + power + "}"
    return _ALGEBRA.sub(one, text).replace("] [", r"]\,[")


def _declared(program, model=None):
    """Every tensor's shape from the declarations, and the names of the dimensions that stand in as numbers.

    None where the declarations do not give every input's shape: nothing is guessed.
    """
    from .errors import EinmlpError
    from .shapes import bind
    declared, model = program.declarations, model or program.model
    if any(rank and name not in declared for name, rank in model.inputs.items()) or not any(declared.values()):
        return None
    names = sorted({d for shape in declared.values() for d in shape if isinstance(d, str)})
    number = {name: _STAND_IN + 2 * k for k, name in enumerate(names)}
    try:
        shapes = bind(model, {n: tuple(number.get(d, d) for d in declared.get(n, ())) for n in model.inputs})
    except EinmlpError:  # declarations that disagree are reported where shapes are used, not on this page
        return None
    return shapes, {value: name for name, value in number.items()}


def _named_back(text: str, names: dict) -> str:
    for value, name in names.items():
        text = re.sub(rf"\b{value}\b", name, text)
    return text


def shapes_latex(program) -> str:
    r"""Each statement's dimension algebra, `A &: [10 \times 3][3 \times 4] = [10 \times 4]`, as aligned rows.

    "" where the declarations do not give every input's shape.
    """
    from .shapes import algebra, dims
    found = _declared(program)
    if found is None:
        return ""
    shapes, names = found
    rows = []
    for checked in program.checked.statements:
        st = checked.statement
        text = _named_back(f"{algebra(st.expr, shapes)} = {dims(shapes[st.name])}", names)
        rows.append(f"{display(st.name)} &: {_algebra_latex(text)}")
    return r"\begin{aligned}" + r" \\ ".join(rows) + r"\end{aligned}"


def _shape_tree(node, length) -> str:
    r"""A matrix-form tree with each matrix as its shape: `[3 \times 10]\,([10 \times 1] \odot ...)`."""
    if node.kind in ("leaf", "elem"):
        return f"[{length(node.rows)} \\times {length(node.cols)}]"
    parts = [_shape_tree(p, length) for p in node.parts]
    parts = [t if p.kind in ("leaf", "elem", "diag") else f"({t})" for p, t in zip(node.parts, parts)]
    if node.kind == "matmul":
        return r"\,".join(parts)
    if node.kind == "hadamard":
        return r" \odot ".join(parts)
    if node.kind == "diag":
        return r"\operatorname{diag}" + parts[0]
    return rf"\textstyle\sum_{{{'rows' if node.axis == 0 else 'cols'}}} " + parts[0]


def matrix_shapes_latex(derivation) -> str:
    r"""The matrix form's products as shapes, like the article's `(3,10)(10,1)(1,4) = (3,4)`.

    "" where the shapes are not declared or there is no matrix form.
    """
    from .matrix import ONE
    matrix = derivation.matrix
    products = matrix.exists and any(tree.kind not in ("leaf", "elem") for _, tree in matrix.trees)
    found = _declared(derivation.program, derivation.model) if products else None
    if found is None:
        return ""
    shapes, names = found
    lengths = {i.name: shapes[tensor][axis] for i, (tensor, axis) in derivation.axes().items()}
    for term in derivation.form.terms:
        lengths.update({i.name: shapes[e.name][e.axis] for i, e in zip(term.summed, term.extents)})
    if any(label != ONE and label.name not in lengths for _, tree in matrix.trees for label in (tree.rows, tree.cols)):
        return ""

    def length(label) -> str:
        return "1" if label == ONE else _named_back(str(lengths.get(label.name, "?")), names)
    products = " + ".join(_shape_tree(tree, length) for _, tree in matrix.trees)
    tree = matrix.trees[0][1]
    return "" if "?" in products else f"{products} = [{length(tree.rows)} \\times {length(tree.cols)}]"


def _outro(derivations) -> str:
    """The shapes of each matrix form's products, below the steps; "" where none are known."""
    rows = []
    for d in derivations:
        shapes = matrix_shapes_latex(d)
        if shapes:
            lhs = to_latex(d.lhs)
            rows.append(aligned_rows(lhs, shapes, margin=0.97).replace("&=", "&:", 1))  # brackets: estimated well
    if not rows:
        return ""
    return ("The shapes of the matrix form" + "s" * (len(derivations) > 1) + ", product by product:\n"
            + r"\[\begin{aligned}" + " \\\\\n".join(rows) + r"\end{aligned}\]")


def _intro(program) -> str:
    """The program above a derivation, and each statement's shapes where they are declared."""
    intro = ("Repeated indices are summed (Einstein notation); other sums are written out. The program:\n"
             + r"\[" + program_latex(program) + r"\]")
    shapes = shapes_latex(program)
    if shapes:
        intro += "\nThe shapes, from the declarations:\n" + r"\[" + shapes + r"\]"
    return intro


def derivations_latex(derivations) -> str:
    """A whole document with the steps of several derivatives of one program, one after another."""
    from pathlib import Path
    first = derivations[0]
    parts = [rf"\intertext{{\large\textbf{{Gradient ${to_latex(d.lhs)}$}}}}" + "\n" + steps_latex(d.steps)
             for d in derivations]
    intro = _intro(first.program)
    title = f"Gradients of ${display(first.of)}$ for " + escape(Path(first.program.name).name)
    return document(title, " \\\\\n".join(parts), intro, _outro(derivations))


# -- notebooks: MathJax 3 knows amsmath's environments but not \intertext, and reads no macros
# inside \text{} or \texttt{} (only \$ \{ \} \\ and $...$), so titles and code are written for it.
def mathjax_text(text: str) -> str:
    r"""Plain text made safe inside MathJax's \text{} or \texttt{}."""
    return "".join("\\" + c if c in "\\${}" else c for c in text)


_TEXTTT = re.compile(r"\\texttt\{((?:[^{}]|\{\})*)\}")
_UNESCAPE = {v: k for k, v in {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                                "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                                "^": r"\textasciicircum{}", "<": r"\textless{}", ">": r"\textgreater{}"}.items()}


def _mathjax_code(latex: str) -> str:
    r"""\texttt{...} escaped for pdflatex (see `escape`) re-escaped for MathJax."""
    pattern = re.compile("|".join(re.escape(k) for k in sorted(_UNESCAPE, key=len, reverse=True)))

    def recode(match):
        return r"\texttt{" + mathjax_text(pattern.sub(lambda m: _UNESCAPE[m.group()], match.group(1))) + "}"
    return _TEXTTT.sub(recode, latex)


def _notebook_title(step) -> str:
    title = r"\textbf{" + mathjax_text(step.title) + "}"
    if step.subject:
        title += r"\ " + display(step.subject)
    if step.renames:
        title += r"\quad " + ",\\ ".join(f"{display_index(a)} \\to {display_index(b)}" for a, b in step.renames)
    return "&" + title


def notebook_latex(steps) -> str:
    r"""The steps as one `$$\begin{aligned}...$$` block: each title above its equation, = aligned."""
    rows = []
    for step in steps:
        rows += [_notebook_title(step), _mathjax_code(equation_latex(step))]
    return "$$\\begin{aligned}" + " \\\\\n".join(rows) + "\\end{aligned}$$"


def gradients_latex(derivations) -> str:
    """Several gradients for a notebook: each in index form and in matrix form."""
    rows = []
    for d in derivations:
        rows.append(f"{to_latex(d.lhs)} &= {to_latex(d.form.expr())}")
        rows.append("&= " + _mathjax_code(d.matrix.latex()))
    return "$$\\begin{aligned}" + " \\\\\n".join(rows) + "\\end{aligned}$$"
