"""A seeded generator of random well-formed programs, in the spirit of opt_einsum's rand_equation.

Each program has a few statements over random index sets: contractions over fresh summed
indices, broadcast sums (biases), elementwise functions (built-in and user-defined),
explicit `sum[...]` (some reusing, for their bound index, a name that is free or summed
elsewhere in the statement), fixed indices on size-1 axes (on the right and on the left,
also left sides of literals only such as `Z[0]`), scalar inputs and scalar intermediates,
division by parenthesised products and sums (`x[i] / (1 + y[h] y[h])`), powers of sums,
`sqrt`/`abs` of squares, logs of products of positive factors (which partly cancel),
indices that occur once and are summed at the end of the statement, and intermediates used
several times at several depths. Every index has its own extent, so a mixed-up axis shows
as a shape or value error. Arguments of log, sqrt and denominators are kept positive.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

EXTENTS = {"i": 3, "j": 2, "k": 4, "l": 3, "m": 2, "n": 5, "mu": 2, "b": 3}
SMOOTH = ["tanh", "sigmoid", "sin", "cos", "softplus", "g", "h", "sq", "q", "half", "lin"]
# q calls p calls h: derivatives of user functions inside user functions (p' is a sum); half reads
# nothing of its argument and lin' is constant: an index only their calls read is still summed
DEFINITIONS = ("g(x) = x^3 - x\nh(x) = x / (1 + x^2)\nsq(x) = sqrt(1 + x^2)\np(x) = x h(x)\nq(x) = p(x)\n"
               "half(x) = 0.5\nlin(x) = 2 x - 1\n")


@dataclass
class Generated:
    source: str
    shapes: dict[str, tuple[int, ...]]
    targets: list[str]
    inputs: list[str] = field(default_factory=list)


def _join(texts: list[str], star: bool) -> str:
    """Factors joined by `*` or juxtaposition; never `name (`, which would read as a call."""
    out = texts[0]
    for t in texts[1:]:
        out += " * " + t if star or (t.startswith("(") and out[-1].isalnum()) else " " + t
    return out


def _paren(text: str) -> str:
    """`text` as the base of a power or a factor: a bare reference or number stays bare."""
    return text if text.replace("[", "").replace("]", "").replace(",", "").replace(".", "").isalnum() else f"({text})"


class _Generator:
    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.shapes: dict[str, tuple] = {}
        self.patterns: dict[str, list] = {}  # input name -> index names of its first use
        self.targets: dict[str, tuple] = {}   # target name -> its left-hand side
        self.positive: set[str] = set()       # targets whose every entry is positive
        self.count = 0
        self.summed = 0
        self.extents = dict(EXTENTS)
        self.elsewhere: list[str] = []        # fresh indices of the statement, for bound-name reuse
        self.bound: set[str] = set()          # indices bound by the enclosing sum[...]s

    def fresh(self, prefix: str = "s", extent: int | None = None) -> str:
        self.summed += 1
        name = f"{prefix}{self.summed}"
        self.extents[name] = extent or self.rng.choice([2, 3, 4])
        self.elsewhere.append(name)
        return name

    def power(self) -> str:
        return self.rng.choice(["^", "^", "**"])

    def ref(self, indices: list[str], new: bool = False) -> str:
        """A reference over exactly `indices`: a reused input, a target, or a new input."""
        r = self.rng.random()
        named = {t: [i for i in lhs if i != 0] for t, lhs in self.targets.items()}
        same = [t for t, lhs in named.items() if len(lhs) == len(indices)
                and all(self.extents[a] == self.extents[b] for a, b in zip(lhs, indices))]
        if same and r < 0.45 and not new:
            name = self.rng.choice(same)
            lhs, it = self.targets[name], iter(indices)
            return f"{name}[{','.join('0' if i == 0 else next(it) for i in lhs)}]" if lhs else name
        reuse = [n for n, p in self.patterns.items() if p is not None and len(p) == len(indices)
                 and all(self.extents[a] == self.extents[b] for a, b in zip(p, indices))]
        if reuse and r < 0.65 and not new:
            name = self.rng.choice(reuse)
            return f"{name}[{','.join(indices)}]" if indices else name
        self.count += 1
        name = f"X{self.count}"
        fixed = bool(indices) and not new and self.rng.random() < 0.2
        diagonal = bool(indices) and not new and not fixed and self.rng.random() < 0.1
        self.patterns[name] = list(indices)
        if fixed or diagonal:  # X[i,0,j] (an extra size-1 axis) or X[i,j,j] (a diagonal): never reused
            self.patterns[name] = None
            at = self.rng.randrange(len(indices) + 1) if fixed else self.rng.randrange(len(indices))
            used = indices[:at] + ([0] if fixed else [indices[at]]) + indices[at:]
            self.shapes[name] = tuple(1 if i == 0 else self.extents[i] for i in used)
            return f"{name}[{','.join(map(str, used))}]"
        self.shapes[name] = tuple(self.extents[i] for i in indices)
        return f"{name}[{','.join(indices)}]" if indices else name

    def scalar(self) -> str:
        """A scalar factor: a scalar input, or a scalar target (`T`, `T[0]`, `T[0,0]`)."""
        scalars = [t for t, lhs in self.targets.items() if all(i == 0 for i in lhs)]
        if scalars and self.rng.random() < 0.5:
            name = self.rng.choice(scalars)
            return f"{name}[{','.join('0' for _ in self.targets[name])}]" if self.targets[name] else name
        return self.ref([])

    # ------------------------------------------------------------ expressions
    def expr(self, free: list[str], depth: int, orphans: bool = False) -> str:
        """An expression whose free indices are `free` (protected by the left or an enclosing
        sum), plus, if `orphans`, fresh indices that occur once and are summed at the end."""
        rng = self.rng
        choice = rng.random() if depth > 0 else rng.random() * 0.3
        if choice < 0.3:
            return self.product(free, orphans)
        if choice < 0.42:
            return f"{rng.choice(SMOOTH)}({self.expr(free, depth - 1, orphans)})"
        if choice < 0.55:
            return self.broadcast(free, depth, orphans)
        if choice < 0.62:
            j = self.fresh()
            self.bound.add(j)
            body = self.expr(free + [j], depth - 1, orphans)
            self.bound.discard(j)
            return f"sum[{j}]({body})"
        if choice < 0.72:
            inner = self.expr(free, depth - 1, orphans)
            form = rng.choice(["sq", "cube", "inv", "half", "neg", "pinv"])
            p = self.power()
            if form == "pinv":  # times a negative power of a positive scoped sum: x[i] * (y[h] y[h])^-1
                return f"{_paren(inner)} * {self.positive_form([], 0)}{p}{rng.choice(['-1', '-2', '-0.5'])}"
            return {"sq": f"{_paren(inner)}{p}2", "cube": f"{_paren(inner)}{p}3",
                    "inv": f"(1 + {_paren(inner)}{p}2){p}-1", "half": f"(1 + {_paren(inner)}^2){p}0.5",
                    "neg": f"(-{_paren(inner)}{p}2 + 1)"}[form]
        if choice < 0.82:  # division by a positive, parenthesised product or sum
            numerator = self.expr(free, depth - 1, orphans)
            sub = [i for i in free if rng.random() < 0.3]
            return f"({numerator} / {self.positive_form(sub, depth - 1)})"
        if choice < 0.9:  # log / sqrt / abs of positive things, possibly over indices summed at the end
            return self.log_like(free, depth, orphans)
        if choice < 0.96:
            return f"{self.expr(free, depth - 1, orphans)} * {self.expr(free, depth - 1)}"
        return _join([self.scalar(), _paren(self.expr(free, depth - 1, orphans))], self.rng.random() < 0.5)

    def broadcast(self, free: list[str], depth: int, orphans: bool) -> str:
        """`(E1 op E2)`: E2 over a subset of E1's indices; sometimes an explicit sum whose bound
        index reuses a name used elsewhere in the statement (`y[nu] + sum[nu](z[nu])`)."""
        rng = self.rng
        sub = [i for i in free if rng.random() < 0.6]
        op = rng.choice(["+", "-", "+"])
        first = self.expr(free, depth - 1, orphans)
        reusable = [i for i in self.elsewhere if i not in free and i not in self.bound]
        if reusable and rng.random() < 0.3:
            j = rng.choice(reusable)
            self.bound.add(j)
            second = f"sum[{j}]({self.expr(sub + [j], depth - 1)})"
            self.bound.discard(j)
        else:
            second = self.expr(sub, depth - 1)
        if rng.random() < 0.15:
            return f"(-{first} {op} {second})"
        return f"({first} {op} {second})"

    def positive_form(self, free: list[str], depth: int, orphans: bool = False) -> str:
        """A parenthesised or called expression over `free` whose value is positive."""
        rng = self.rng
        choice = rng.random()
        if choice < 0.25:  # a sum of squares, scoped by its parentheses: (y[h] y[h])
            h = self.fresh()
            r = self.ref(free + [h])
            return f"({'1 + ' if rng.random() < 0.5 else ''}{r} {r})"
        if choice < 0.45:
            inner = self.expr(free, depth - 1, orphans) if depth > 0 else self.ref(free)
            return f"(1 + {_paren(inner)}{self.power()}2)"
        if choice < 0.55:  # a power of a scoped sum: (1 + (a[j] b[j])^2)
            j = self.fresh()
            return f"(1 + ({self.ref(free + [j])} {self.ref([j])}){self.power()}2)"
        if choice < 0.65:
            return f"softplus({self.expr(free, depth - 1, orphans) if depth > 0 else self.ref(free)})"
        if choice < 0.75:
            c = self.fresh()
            r = self.ref(free + [c])
            return f"sqrt(({r} {r}){self.power()}2)"
        positive = [t for t in self.positive if len([i for i in self.targets[t] if i != 0]) == len(free)
                    and all(self.extents[a] == self.extents[b]
                            for a, b in zip([i for i in self.targets[t] if i != 0], free))]
        if positive and choice < 0.9:
            name = rng.choice(positive)
            it = iter(free)
            lhs = self.targets[name]
            return f"{name}[{','.join('0' if i == 0 else next(it) for i in lhs)}]" if lhs else name
        return f"exp({self.ref(free)})"

    def log_like(self, free: list[str], depth: int, orphans: bool) -> str:
        """log of a product of positive factors (`log(a[h] * (1 + a[j]^2))`, indices h, j
        summed at the end when orphans are allowed), or sqrt / abs of squares."""
        rng = self.rng
        choice = rng.random()
        if choice < 0.6:
            part = [i for i in free if rng.random() < 0.5]
            factors = [self.positive_form(part, depth - 1)]
            if orphans and rng.random() < 0.7:  # the same input over two indices that occur once
                extent = rng.choice([2, 3, 4])
                h, j = self.fresh("o", extent), self.fresh("o", extent)
                a = self.ref([h], new=True)
                name = a.split("[")[0]
                factors.append(f"(1 + {name}[{h}]^2)")
                factors.append(f"(1 + {name}[{j}]{self.power()}2)")
            missing = [i for i in free if i not in part]
            if missing:
                factors.append(self.positive_form(missing, 0))
            rng.shuffle(factors)
            return f"log({_join(factors, rng.random() < 0.5)})"
        if choice < 0.8:
            return f"sqrt({self.positive_form(free, depth - 1, orphans)})"
        inner = self.expr(free, depth - 1, orphans)
        return f"abs({_paren(inner)}{self.power()}2 + 1)" if rng.random() < 0.5 else f"sqrt(({_paren(inner)})^2)"

    def product(self, free: list[str], orphans: bool = False) -> str:
        """A contraction: factors covering `free`, joined by one or two fresh summed indices."""
        summed = [self.fresh() for _ in range(self.rng.choice([0, 1, 1, 2]))]
        factors = []
        for j in summed:  # each summed index in exactly two factors
            pick = [i for i in free if self.rng.random() < 0.4]
            factors.append(pick + [j])
            factors.append([j] + [i for i in free if self.rng.random() < 0.3])
        covered = {i for f in factors for i in f}
        missing = [i for i in free if i not in covered]
        if missing or not factors:
            factors.append(missing)
        if orphans and self.rng.random() < 0.2:
            factors.append([self.fresh("o")])
        texts = [self.ref(list(dict.fromkeys(f))) for f in factors]
        if self.rng.random() < 0.15:
            texts.insert(self.rng.randrange(len(texts) + 1), self.scalar())
        coefficient = self.rng.choice(["", "", "2 ", "0.5 "])
        return coefficient + _join(texts, self.rng.random() < 0.2)

    # ------------------------------------------------------------ statements
    def lhs(self) -> tuple[list[str], list]:
        names = list(EXTENTS)
        rank = self.rng.choice([0, 0, 1, 1, 2, 2, 3])
        named = self.rng.sample(names, rank)
        lhs: list = list(named)
        if self.rng.random() < 0.25 and rank < 3:
            for _ in range(self.rng.choice([1, 1, 2]) if rank == 0 else 1):
                lhs.insert(self.rng.randrange(len(lhs) + 1), 0)
        return named, lhs

    def program(self, statements: int, depth: int) -> Generated:
        lines = []
        for s in range(statements):
            named, lhs = self.lhs()
            name = f"T{s + 1}"
            self.elsewhere = []
            if self.rng.random() < 0.15:  # a positive intermediate, for logs later: exp(s) u[n]
                body = _join([f"exp({self.scalar()})", self.positive_form(named, 1)], self.rng.random() < 0.5)
                self.positive.add(name)
            else:
                body = self.expr(named, depth, orphans=self.rng.random() < 0.4)
            lines.append(f"{name}[{','.join(map(str, lhs))}] = {body}" if lhs else f"{name} = {body}")
            self.targets[name] = tuple(lhs)
        last = list(self.targets)[-1]
        free = [i for i in self.targets[last] if i != 0]
        entry = f"{last}[{','.join('0' if i == 0 else i for i in self.targets[last])}]" if self.targets[last] else last
        p = self.power()
        loss = (f"{self.rng.choice(['tanh', 'sq', 'sigmoid'])}({entry}) + 0.5 {entry}{p}2" if free
                else f"{entry} + 0.5 {entry}{p}2")
        if free and self.rng.random() < 0.4:  # L = y[nu] + sum[nu](z[nu]): a bound name free elsewhere
            bound = self.rng.sample(free, self.rng.choice([1, len(free)]))
            loss += f" + 0.3 sum[{','.join(bound)}]({self.ref(bound)})"
        others = [t for t in self.targets if t != last]
        if others and self.rng.random() < 0.4:  # an earlier intermediate used again, summed explicitly
            t = self.rng.choice(others)
            named = [i for i in self.targets[t] if i != 0]
            ref = f"{t}[{','.join('0' if i == 0 else i for i in self.targets[t])}]" if self.targets[t] else t
            loss += f" + 0.2 sum[{','.join(named)}]({_paren(ref)}^2)" if named else f" + 0.2 {ref}"
        lines.append(f"L = {loss}")
        # capitalised names without indices look like matrices: scalar inputs say they are scalars
        lines = [f"{n} is scalar" for n, shape in self.shapes.items() if shape == () and n[:1].isupper()] + lines
        return Generated(DEFINITIONS + "\n".join(lines) + "\n", dict(self.shapes), list(self.targets) + ["L"],
                         list(self.shapes))


def random_program(seed: int, statements: int | None = None, depth: int | None = None) -> Generated:
    """The program for `seed`: the same seed always gives the same program."""
    rng = random.Random(seed)
    generator = _Generator(seed)
    return generator.program(statements or rng.choice([1, 2, 3]), depth if depth is not None else rng.choice([1, 2, 3]))


if __name__ == "__main__":
    import sys
    for seed in range(int(sys.argv[1]) if len(sys.argv) > 1 else 3):
        print(f"# seed {seed}\n{random_program(seed).source}")
