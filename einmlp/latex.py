"""LaTeX for derivations.

Display names (Greek, hats, tildes, layer superscripts), steps as `align*` rows, and whole
documents that a plain `pdflatex` compiles.
"""

from __future__ import annotations

import re

from sympy.printing.latex import LatexPrinter

from .functions import UserFunction

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
        return rf"\frac{{\partial {self._print(expr.args[0])}}}{{\partial {self._print(expr.args[1])}}}"

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


def equation_latex(step) -> str:
    """One step's equation, `lhs &= rhs`, for an align* row."""
    rhs = step.latex_expr if step.latex_expr is not None else to_latex(step.expr)
    lhs = display(step.lhs) if isinstance(step.lhs, str) else to_latex(step.lhs)
    return f"{lhs} &= {rhs}"


def steps_latex(steps) -> str:
    """The steps as an align* body, a title above each equation."""
    rows = [rf"\intertext{{\textbf{{{_title(step)}}}}}" + "\n" + equation_latex(step) for step in steps]
    return " \\\\\n".join(rows)


def document(title: str, body: str, intro: str = "") -> str:
    """A whole LaTeX document around an align* body; compiles with texlive-latex-base.

    `title` is LaTeX (math allowed).
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
        r"\end{document}",
        ""])


def derivation_latex(derivation, *, whole: bool = False) -> str:
    """align* body of the steps, or a whole document with `whole=True`."""
    body = steps_latex(derivation.steps)
    if not whole:
        return body
    intro = ("Repeated indices are summed (Einstein notation). The program:\n"
             + r"\[" + program_latex(derivation.program) + r"\]")
    from pathlib import Path
    title = "$" + to_latex(derivation.lhs) + "$ for " + escape(Path(derivation.program.name).name)
    return document(title, body, intro)


def program_latex(program) -> str:
    """The program's statements as an aligned array."""
    rows = []
    for d in program.model.definitions.values():
        rows.append(f"{to_latex(d.lhs)} &= {to_latex(d.expr)}")
    return r"\begin{aligned}" + r" \\ ".join(rows) + r"\end{aligned}"


def derivations_latex(derivations) -> str:
    """A whole document with the steps of several derivatives of one program, one after another."""
    from pathlib import Path
    first = derivations[0]
    parts = [rf"\intertext{{\large\textbf{{Gradient ${to_latex(d.lhs)}$}}}}" + "\n" + steps_latex(d.steps)
             for d in derivations]
    intro = ("Repeated indices are summed (Einstein notation). The program:\n"
             + r"\[" + program_latex(first.program) + r"\]")
    title = f"Gradients of ${display(first.of)}$ for " + escape(Path(first.program.name).name)
    return document(title, " \\\\\n".join(parts), intro)


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
