"""A seeded generator of random well-formed programs, in the spirit of opt_einsum's rand_equation.

Each program has a few statements over random index sets: contractions over fresh summed
indices, broadcast sums, elementwise functions (built-in and user-defined), explicit
`sum[...]`, fixed indices on size-1 axes, reused inputs, and a scalar loss at the end.
Every index has its own extent, so a mixed-up axis shows as a shape or value error.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

EXTENTS = {"i": 3, "j": 2, "k": 4, "l": 3, "m": 2, "n": 5, "mu": 2, "b": 3}
SMOOTH = ["tanh", "sigmoid", "sin", "cos", "softplus", "g", "h", "sq"]
DEFINITIONS = "g(x) = x^3 - x\nh(x) = x / (1 + x^2)\nsq(x) = sqrt(1 + x^2)\n"


@dataclass
class Generated:
    source: str
    shapes: dict[str, tuple[int, ...]]
    targets: list[str]
    inputs: list[str] = field(default_factory=list)


class _Generator:
    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.shapes: dict[str, tuple] = {}
        self.patterns: dict[str, list] = {}  # input name -> index names of its first use
        self.targets: dict[str, tuple] = {}   # target name -> its left-hand side
        self.count = 0
        self.summed = 0
        self.extents = dict(EXTENTS)

    def fresh_summed(self, taken: set) -> str:
        while True:
            self.summed += 1
            name = f"s{self.summed}"
            if name not in taken:
                self.extents[name] = self.rng.choice([2, 3, 4])
                return name

    def ref(self, indices: list[str]) -> str:
        """A reference over exactly `indices`: a reused input, a target, or a new input."""
        r = self.rng.random()
        same = [t for t, lhs in self.targets.items() if len([i for i in lhs if i != 0]) == len(indices)
                and all(self.extents[a] == self.extents[b] for a, b in zip([i for i in lhs if i != 0], indices))]
        if same and r < 0.35:
            name = self.rng.choice(same)
            lhs, it = self.targets[name], iter(indices)
            return f"{name}[{','.join('0' if i == 0 else next(it) for i in lhs)}]" if lhs else name
        reuse = [n for n, p in self.patterns.items() if p is not None and len(p) == len(indices)
                 and all(self.extents[a] == self.extents[b] for a, b in zip(p, indices))]
        if reuse and r < 0.55:
            name = self.rng.choice(reuse)
            return f"{name}[{','.join(indices)}]" if indices else name
        self.count += 1
        name = f"X{self.count}"
        fixed = bool(indices) and self.rng.random() < 0.2
        self.patterns[name] = list(indices)
        self.shapes[name] = tuple(self.extents[i] for i in indices) + ((1,) if fixed else ())
        if fixed:
            self.patterns[name] = None  # never reused: it has an extra size-1 axis
            return f"{name}[{','.join(indices)},0]"
        return f"{name}[{','.join(indices)}]" if indices else name

    def expr(self, free: list[str], taken: set, depth: int) -> str:
        """An expression whose free indices are exactly `free` (all protected by the left)."""
        choice = self.rng.random() if depth > 0 else 0.0
        if choice < 0.3:
            return self.product(free, taken)
        if choice < 0.5:
            return f"{self.rng.choice(SMOOTH)}({self.expr(free, taken, depth - 1)})"
        if choice < 0.7:
            sub = [i for i in free if self.rng.random() < 0.6]
            op = self.rng.choice(["+", "-"])
            return f"({self.expr(free, taken, depth - 1)} {op} {self.expr(sub, taken, depth - 1)})"
        if choice < 0.8:
            j = self.fresh_summed(taken)
            return f"sum[{j}]({self.expr(free + [j], taken | {j}, depth - 1)})"
        if choice < 0.9:
            power = self.rng.choice(["2", "3", "-1"])
            inner = self.expr(free, taken, depth - 1)
            return f"(1 + {inner}^2)^{power}" if power == "-1" else f"({inner})^{power}"
        return f"{self.expr(free, taken, depth - 1)} * {self.expr(free, taken, depth - 1)}"

    def product(self, free: list[str], taken: set) -> str:
        """A contraction: factors covering `free`, joined by one or two fresh summed indices."""
        summed = [self.fresh_summed(taken) for _ in range(self.rng.choice([0, 1, 1, 2]))]
        factors = []
        for j in summed:  # each summed index in exactly two factors
            pick = [i for i in free if self.rng.random() < 0.4]
            factors.append(pick + [j])
            factors.append([j] + [i for i in free if self.rng.random() < 0.3])
        covered = {i for f in factors for i in f}
        missing = [i for i in free if i not in covered]
        if missing or not factors:
            factors.append(missing)
        text = " ".join(self.ref(list(dict.fromkeys(f))) for f in factors)
        coefficient = self.rng.choice(["", "", "2 ", "0.5 "])
        return coefficient + text

    def program(self, statements: int, depth: int) -> Generated:
        lines = []
        names = list(EXTENTS)[:8]
        for s in range(statements):
            rank = self.rng.choice([0, 1, 1, 2, 2, 3])
            lhs = self.rng.sample(names, rank)
            fixed = rank and rank < 3 and self.rng.random() < 0.2
            lhs_text = lhs + ([0] if fixed else [])
            name = f"T{s + 1}"
            body = self.expr(lhs, set(lhs), depth)
            lines.append(f"{name}[{','.join(map(str, lhs_text))}] = {body}" if lhs_text else f"{name} = {body}")
            self.targets[name] = tuple(lhs_text)
        last = list(self.targets)[-1]
        lhs = [i for i in self.targets[last] if i != 0]
        entry = f"{last}[{','.join('0' if i == 0 else i for i in self.targets[last])}]" if self.targets[last] else last
        lines.append(f"L = {self.rng.choice(['tanh', 'sq', 'sigmoid'])}({entry}) + 0.5 {entry}^2" if lhs
                     else f"L = {entry} + 0.5 {entry}^2")
        return Generated(DEFINITIONS + "\n".join(lines) + "\n", dict(self.shapes), list(self.targets) + ["L"])


def random_program(seed: int, statements: int | None = None, depth: int | None = None) -> Generated:
    """The program for `seed`: the same seed always gives the same program."""
    rng = random.Random(seed)
    generator = _Generator(seed)
    return generator.program(statements or rng.choice([1, 2, 3]), depth if depth is not None else rng.choice([1, 2, 3]))


if __name__ == "__main__":
    import sys
    for seed in range(int(sys.argv[1]) if len(sys.argv) > 1 else 3):
        print(f"# seed {seed}\n{random_program(seed).source}")
