"""Line breaking for LaTeX rows: where a long right-hand side is cut, by an estimate of its width.

amsmath has no automatic breaks (breqn is not in texlive-latex-base), so long right-hand
sides are cut here, at top-level spaces, by a generous estimate of how wide they set.
"""

from __future__ import annotations

import math
import re

TEXT_WIDTH = 455.0  # points: the \textwidth (16cm) of `document`
_TOKEN = re.compile(r"\\[A-Za-z]+|\\.|\s+|.", re.S)
_TEXT = {r"\mathrm": 5.8, r"\operatorname": 5.8, r"\texttt": 5.8, r"\text": 5.6, r"\textbf": 6.4, r"\mathbf": 7.0}
_SPACE = {r"\,": 1.9, r"\;": 3.2, r"\quad": 11.0, r"\qquad": 22.0, r"\ ": 3.7, r"\!": -1.9}
_WIDE = {"+": 13.5, "-": 13.5, "=": 15.0, "<": 15.0, ">": 15.0, r"\cdot": 8.0, r"\odot": 13.5, r"\times": 13.5,
         r"\to": 17.0, r"\left": 3.4, r"\top": 8.5, r"\sum": 16.0, r"\cdots": 14.0, r"\ldots": 14.0, r"\partial": 6.2}
_OPERATORS = {r"\tanh", r"\exp", r"\log", r"\sin", r"\cos", r"\max", r"\min"}
_ZERO = {r"\textstyle", r"\displaystyle", r"\scriptstyle", r"\limits", r"\nolimits", r"\right",
         r"\hat", r"\widetilde", r"\tilde", r"\bar", r"\overline", r"\allowbreak", r"\textgreater", r"\textless"}


def width(tex: str) -> float:
    """A generous estimate, in points, of how wide `tex` sets in display style at 11pt: no TeX at hand."""
    tokens = [t for t in _TOKEN.findall(tex) if not t.isspace()]
    pos = 0

    def argument(text: float) -> float:  # a braced group or one token
        nonlocal pos
        if pos < len(tokens) and tokens[pos] == "{":
            pos += 1
            total = 0.0
            while pos < len(tokens) and tokens[pos] != "}":
                total += item(text)
            pos += 1
            return total
        return item(text) if pos < len(tokens) else 0.0

    def item(text: float) -> float:
        nonlocal pos
        if tokens[pos] == "{":
            return argument(text)
        token = tokens[pos]
        pos += 1
        if token in "_^":  # a subscript and a superscript stack: the wider counts
            wide = 0.72 * argument(text)
            while pos < len(tokens) and tokens[pos] in "_^":
                pos += 1
                wide = max(wide, 0.72 * argument(text))
            return wide
        if token == r"\frac":
            return max(argument(text), argument(text)) + 6.0
        if token in _OPERATORS:
            return 5.5 * len(token) - 2.0
        if token == r"\sqrt":
            return 9.0 + argument(text)
        if token in _TEXT:
            return argument(_TEXT[token]) + (3.0 if token == r"\operatorname" else 0.0)
        if token in _SPACE:
            return _SPACE[token]
        if text:
            return 0.0 if token in _ZERO else text
        if token in _ZERO:
            return 0.0
        if token in _WIDE:
            return _WIDE[token]
        if token.startswith("\\"):
            return 6.5
        if token.isupper():
            return 11.5 if token in "WM" else 9.0
        if token.islower():
            return 6.0
        return 5.6 if token.isdigit() else 4.4

    total = 0.0
    while pos < len(tokens):
        total += item(0.0)
    return total


def _atoms(tex: str) -> list[str]:
    r"""`tex` cut at its top-level spaces: nothing inside braces or \left...\right is cut."""
    atoms, depth, current = [], 0, ""
    for token in _TOKEN.findall(tex):
        depth += (token in ("{", r"\left")) - (token in ("}", r"\right"))
        if token.isspace() and depth == 0:
            atoms, current = atoms + [current] * bool(current), ""
        else:
            current += token
    return atoms + [current] * bool(current)


def _pieces(atom: str, room: float) -> list[str]:
    r"""An atom wider than `room` opened up, so that it can break.

    A \texttt into its words; a \left( ... \right) group into plain parentheses around its own
    atoms (rows of an alignment cannot split a \left ... \right pair).
    """
    if width(atom) <= room:
        return [atom]
    if atom.startswith(r"\texttt{") and atom.endswith("}") and " " in atom:
        return [r"\texttt{" + word + "}" for word in atom[len(r"\texttt{"):-1].split(" ")]
    if atom.startswith(r"\left("):
        tokens, depth = _TOKEN.findall(atom), 0
        for k, token in enumerate(tokens):
            depth += (token == r"\left") - (token == r"\right")
            if depth == 0 and tokens[k + 1:k + 2] == [")"]:
                inner = "(" + "".join(tokens[2:k]) + ")" + "".join(tokens[k + 2:])
                return [piece for part in _atoms(inner) for piece in _pieces(part, room)] if " " in inner else [atom]
    return [atom]


def _join(atoms: list[str]) -> str:
    r"""Atoms back into LaTeX; neighbouring \texttt words become one \texttt again."""
    out: list[str] = []
    for atom in atoms:
        if out and out[-1].startswith(r"\texttt{") and atom.startswith(r"\texttt{"):
            out[-1] = out[-1][:-1] + " " + atom[len(r"\texttt{"):]
        else:
            out.append(atom)
    return " ".join(out)


BINARY = ("+", "-", r"\cdot", r"\odot", r"\times")


def _terms(atoms: list[str]) -> list[list[str]]:
    """Atoms grouped into the terms of the top-level sum; an operator or a number stays with the atom after it."""
    terms: list[list[str]] = [[]]
    depth, glued = 0, ""
    for atom in atoms:
        if atom in ("+", "-") and depth == 0 and (any(terms[-1]) or glued):
            terms.append([])
        if atom in BINARY or atom.isdigit():
            glued += atom + " "
            continue
        terms[-1].append(glued + atom)
        glued = ""
        depth += atom.count("(") - atom.count(r"\left(") - atom.count(")") + atom.count(r"\right)")
    return [term for term in terms if term] + [[glued.strip()]] * bool(glued)


def break_lines(tex: str, room: float) -> list[str]:
    """`tex` cut into lines at most about `room` points wide.

    Each term of a sum starts a line where it does not fit on the current one; a term longer
    than a line is cut between its factors into lines of even width, not full ones and a stub.
    """
    if width(tex) <= room:
        return [tex]
    atoms = [piece for atom in _atoms(tex) for piece in _pieces(atom, room)]
    lines: list[list[str]] = [[]]
    used = 0.0
    for term in _terms(atoms):
        wide = sum(width(atom) for atom in term)
        if lines[-1] and used + wide > room:
            lines.append([])
            used = 0.0
        target = wide / max(1, math.ceil(wide / room))  # a term of no width (an empty group) is one line
        for atom in term:
            size = width(atom)
            if lines[-1] and (used + size > room or (wide > room and used + size / 2 > target)):
                lines.append([])
                used = 0.0
            lines[-1].append(atom)
            used += size
    return [_join(line) for line in lines]
