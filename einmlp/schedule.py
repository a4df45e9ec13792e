"""The order of a plan's equations: results as early as they can be, no statement that only renames."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .lower import Equation


NAME = re.compile(r"(?<![\w.])[A-Za-z_]\w*")  # a name an equation may read


def reads(e: Equation) -> set[str]:
    """Every name an equation's source mentions (a few more than it reads: never fewer)."""
    return set(NAME.findall(e.code or e.text)) | set(e.args)


def early(equations: tuple[Equation, ...], outputs: set[str]) -> tuple[Equation, ...]:
    """Each result (and what only it reads) computed as soon as its operands are.

    dW2 = H1.T @ Bbar comes right after Bbar, not after every other adjoint: Bbar is dead sooner,
    so all gradients of a deep network keep about one adjoint alive at a time, as backprop does.
    """
    position = {e.out: k for k, e in enumerate(equations)}
    deps = [{position[r] for r in reads(e) if position.get(r, k) < k} for k, e in enumerate(equations)]
    readers: dict[int, set] = {}
    for k, ds in enumerate(deps):
        for d in ds:
            readers.setdefault(d, set()).add(k)
    late: set[int] = set()
    for k in reversed(range(len(equations))):
        if equations[k].out in outputs or readers.get(k) and readers[k] <= late:
            late.add(k)
    order: list[int] = []
    placed: set[int] = set()
    waiting = sorted(late)

    def place_ready():
        while ready := [k for k in waiting if deps[k] <= placed]:
            order.extend(ready)
            placed.update(ready)
            waiting[:] = [k for k in waiting if k not in placed]
    place_ready()
    for k in range(len(equations)):
        if k not in late:
            order.append(k)
            placed.add(k)
            place_ready()
    return tuple(equations[k] for k in order)


def name_directly(equations: list[Equation], outputs: dict) -> tuple[Equation, ...]:
    """`H = _t2`: compute H where _t2 was computed, and read H wherever _t2 was read (one pass)."""
    aliases: dict[str, Equation] = {}
    for e in equations:
        if e.op == "eval" and re.fullmatch(r"_t\d+", e.text) and e.text not in outputs.values():
            aliases.setdefault(e.text, e)
    dropped = {id(e) for e in aliases.values()}

    def renamed(text: str) -> str:
        return _TEMP.sub(lambda m: aliases[m.group(1)].out if m.group(1) in aliases else m.group(1), text)
    out = []
    for e in equations:
        if id(e) in dropped:
            continue
        if e.out in aliases:
            e = replace(e, out=aliases[e.out].out, comment=aliases[e.out].comment)
        out.append(replace(e, args=tuple(aliases[a].out if a in aliases else a for a in e.args),
                           text=renamed(e.text), code=renamed(e.code), spec=renamed(e.spec)))
    return tuple(out)


_TEMP = re.compile(r"(?<![\w.])(_t\d+)(?!\w)")
