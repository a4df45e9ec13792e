"""A grammar-aware fuzzer for einmlp: generate programs, run the whole pipeline, classify.

Input generation:

- `ProgramGenerator`: random programs from the language's grammar (statements with named
  and literal-0 indices, built-in / user-defined / misspelled / abstract function calls,
  `sum[...]`, powers, huge and degenerate numbers, unicode and control characters, very
  long names, deep nesting, long statement chains, many nested user functions, names that
  collide with Python / numpy / sympy internals), mostly well formed, sometimes broken.
- `Mutator`: token-level mutations of the programs in `derivations/*.ein`.
- `FIXED_INPUTS`: the hand-picked nasty inputs, run first in every campaign.

Driver: each input runs in a worker subprocess (one at a time) under a limit on its CPU time
(so a loaded machine does not turn slow inputs into hangs; a worker blocked without using
the CPU is stopped by the driver at three times the limit of wall-clock time):
parse -> forward value of the targets -> for each input name grad (sometimes hessian,
several-at-once `grad([...])`, the display forms and `einmlp.check`) -> compile -> call on
random arrays of consistent shapes -> compare with central finite differences of the
compiled forward value. Each input is classified as

    OK         everything ran (or numbers were non-finite, so nothing could be compared)
    ERROR      a clean `einmlp.EinmlpError` (expected for broken input)
    INTERNAL   any other exception (type, message and traceback tail are recorded)
    HANG       the input used more CPU time than the limit, twice (it is run once more in a
               fresh worker: a loaded machine stretches CPU time too, through shared caches)
    WRONG      a compiled (second) derivative disagrees with finite differences, or a value's
               shape differs from its left-hand side's (or the derivative's) shape
    CODE-EXEC  the input made a marker file appear (user text reached exec)

Standalone:  python tests/fuzz.py --count 100000 --seed 0 --report out.json
Reduce:      python tests/fuzz.py --reduce out.json --report reduced.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from pathlib import Path

import oracle

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DERIVATIONS = ROOT / "derivations"

CATEGORIES = ["OK", "ERROR", "INTERNAL", "HANG", "WRONG", "CODE-EXEC"]
BAD = ("INTERNAL", "HANG", "WRONG", "CODE-EXEC")
SEVERITY = {c: k for k, c in enumerate(CATEGORIES)}
SEVERITY["HANG"] = SEVERITY["CODE-EXEC"] + 1  # a hang ends the input: nothing after it counts
SEVERITY["CODE-EXEC"] = 99

MARKER = "@MARKER@"  # payloads write this path; the driver substitutes a real one

# ---------------------------------------------------------------------------------------
# input generation
# ---------------------------------------------------------------------------------------

BUILTINS = ["exp", "log", "tanh", "sigmoid", "relu", "softplus", "sqrt", "abs", "sin", "cos"]
MISSPELLED = ["expp", "Exp", "sigmoind", "tanhh", "lg", "sqr", "relu2", "soft_plus", "cosh", "max", "sum",
              "exp_", "e", "ln", "Sigmoid", "log10", "pow", "eval", "exec", "print", "open"]
COLLIDING = ["np", "np_", "oe", "_t1", "t1", "_functions", "functions", "grad_x", "grad_W", "grad_", "Indexed",
             "IndexedBase", "Add", "Mul", "Pow", "KroneckerDelta", "Symbol", "Integer", "Float", "Rational",
             "lambda", "def", "import", "class", "return", "None", "True", "False", "x", "__class__",
             "_c0", "c0", "_full", "full", "_arange", "_equal", "_ipow", "ipow", "einsum", "contract",
             "sum", "exp", "log", "pi", "E", "I", "oo", "nan", "inf", "S", "N", "Q", "O", "sp", "sympy",
             "numpy", "self", "args", "compute", "forward_L", "dL_dx", "grads_L", "print", "exec", "eval",
             "open", "os", "sys", "list", "dict", "type", "object", "int", "float", "range", "len", "step",
             "sigmoid", "relu", "softplus", "Extent", "ESum", "Str", "Tuple", "N_i", "Delta", "mu", "Yhat",
             "Ytilde", "W1", "f1", "f2", "sq", "kron", "delta", "is", "x", "X", "T", "A"]
INDEX_NAMES = ["i", "j", "k", "l", "m", "n", "b", "d", "z", "t", "u", "v", "mu", "nu", "alpha", "i1", "i2",
               "x", "np", "lambda", "sum", "e", "E", "I", "N", "pi", "oo", "_i", "i_"]
SPECIAL_NUMBERS = ["9^9^9", "2^2^2^2^2^2", "1e100000000", "1e300", "1e-300", "1e400", "1e-400", "1e400/3",
                   "0/0", "1/0", "0^0", "0^-1", "(-1)^0.5", "(-8)^(1/3)", "exp(1)", "exp(1000)", "log(0)",
                   "log(-1)", "sqrt(-1)", "2^1000000", "10^-9999", "0.1^400", "2^0.5", "1e308*10",
                   "1" + "0" * 5000, "9" * 5000 + ".5", "0." + "0" * 4000 + "1", "3.", ".5", "1E5", "1e+3",
                   "00007", "0e0", "1e99999999999999999999", "10^10^10", "(1/3)^(1/3)", "1/3", "-0", "0.0"]
HUGE_POWERS = ["^9^9^9", "^1e300", "^1e100000000", "^(-1e300)", "^1000000", "^-1000000", "^2^2^2^2^2^2",
               "^0", "^-1", "^0.5", "^(1/3)", "^1e-300", "^" + "9" * 500, "^(2^64)", "^-0.5", "^2.5",
               "^(0/0)", "^(1/0)"]
ODD_CHARS = ["\r", "\x00", "\x0b", "\x0c", "\u2028", "\u2029", "\t", "\x85", "\xa0", "\ufeff", "\u200b",
             "μ", "Ŷ", "é", "ｘ", "Δ", "₁", "²", "·", "×", "⊙", "ᵀ", "@", ".T", "$", "\\", "'", "\"", "`",
             "{", "}", "!", "?", "&", "|", "~", ":", "%", "<", ">", "..."]
CODE_PAYLOADS = [
    "__import__('os').system('touch @MARKER@')",
    "open('@MARKER@', 'w').close()",
    "__import__('pathlib').Path('@MARKER@').touch()",
]

SMOOTH_DEFS = ["g(x) = x^3 - x", "h(x) = x / (1 + x^2)", "sq(x) = sqrt(1 + x^2)", "f1(x) = x^2",
               "f2(x) = x^3", "q(x) = exp(-x^2)", "r(x) = 1/(1+x^2)", "w(x) = log(1 + x^2)"]


def payload_comment(rng: random.Random) -> str:
    """A comment whose `\\r` line breaks smuggle code into generated Python, if comments leak."""
    code = rng.choice(CODE_PAYLOADS)
    sep = rng.choice(["\r", "\r", "\r\n", "\x0c\r", "\u2028", "\x0b", "\x85"])
    tail = rng.choice(["\rdef _f():\r    #", "\r#", "", "\rif 0:\r    #", "\r(", "\rx = [#"])
    return f"# {sep}{code}{tail}"


class ProgramGenerator:
    """Random programs from the grammar, with adversarial knobs turned at random."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.wild = rng.random() < 0.35  # adversarial knobs on; otherwise mostly well formed
        self.functions: list[str] = []

    # -- pieces ---------------------------------------------------------------------------
    def name(self, upper: bool = True) -> str:
        r = self.rng.random()
        if not self.wild:
            if r < 0.05:
                return self.rng.choice([c for c in COLLIDING if c[0] != "_"])
            r = 1.0
        if r < 0.08:
            return self.rng.choice(COLLIDING)
        if r < 0.1:
            return self.rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") + "x" * self.rng.choice([200, 1000, 5000])
        if r < 0.12:
            return self.rng.choice(["W_1", "B_1", "X_ij", "Ŷ", "W¹", "f₂", "Δ", "μ", "W⁽¹⁾"])
        base = self.rng.choice("ABCDGHKLOPQSTVWXYZ" if upper else "abcdhpqrswxyz")
        return base + (str(self.rng.randint(0, 12)) if self.rng.random() < 0.5 else "")

    def index(self) -> str:
        r = self.rng.random() if self.wild else 1.0
        if r < 0.05:
            return self.rng.choice(INDEX_NAMES[15:])
        if r < 0.07:
            return "i" * self.rng.choice([50, 500])
        return self.rng.choice(INDEX_NAMES[:15])

    def number(self) -> str:
        r = self.rng.random()
        if r < 0.12 and self.wild:
            return self.rng.choice(SPECIAL_NUMBERS)
        if r < 0.5:
            return str(self.rng.randint(0, 5))
        if r < 0.8:
            return f"{self.rng.uniform(0, 3):.{self.rng.randint(1, 4)}f}"
        return self.rng.choice(["0.5", "1e-3", "2e2", "1.5e0", "3", "10"])

    # -- a program ------------------------------------------------------------------------
    def program(self) -> str:
        rng = self.rng
        r = rng.random()
        if r < 0.04:
            return self.long_chain()
        if r < 0.07:
            return self.nested_functions()
        if r < 0.10:
            return self.deep_nesting()
        self.functions: list[str] = []
        lines: list[str] = []
        if rng.random() < 0.5:
            for d in rng.sample(SMOOTH_DEFS, rng.randint(1, 3)):
                lines.append(d)
                self.functions.append(d.split("(")[0])
        if rng.random() < 0.15:  # a user function with a random body
            fname = self.name(upper=False)
            self.functions.append(fname)
            self.tensors = {"x": ()}
            lines.append(f"{fname}(x) = {self.expr(('x',) if False else (), 2, scalar_only=True)}")
        # inputs: names with ranks and index patterns
        self.tensors: dict[str, tuple] = {}
        for _ in range(rng.randint(1, 4)):
            rank = rng.choice([0, 1, 1, 2, 2, 2, 3])
            self.tensors[self.name()] = tuple(self.index() for _ in range(rank))
        targets = []
        for s in range(rng.randint(1, 5)):
            tname = self.name() if rng.random() < 0.9 else rng.choice(COLLIDING)
            if s == 0 or rng.random() < 0.7:
                rank = rng.choice([0, 0, 1, 1, 2, 3])
            else:
                rank = 0
            lhs = []
            for _ in range(rank):
                lhs.append(0 if rng.random() < 0.12 else self.index())
            if rng.random() < 0.9:  # usually distinct
                seen, uniq = set(), []
                for i in lhs:
                    if i in seen and i != 0:
                        continue
                    seen.add(i)
                    uniq.append(i)
                lhs = uniq
            rhs = self.expr(tuple(i for i in lhs if isinstance(i, str)), rng.randint(1, 4))
            used = set(re.findall(r"[\[,]\s*([A-Za-z]\w*)", rhs))
            missing = [i for i in lhs if isinstance(i, str) and i not in used]
            if missing and (not self.wild or rng.random() < 0.7):  # every left index must occur on the right
                extra = f"B{len(self.tensors)}"
                self.tensors[extra] = tuple(missing)
                rhs = f"({rhs}) {rng.choice(['+', '*', '-'])} {extra}[{','.join(missing)}]"
            lhs_text = f"[{','.join(map(str, lhs))}]" if lhs else ""
            line = f"{tname}{lhs_text} = {rhs}"
            if rng.random() < 0.1:
                line += "  # " + rng.choice(["comment", "x[i] = y", "é ü", "\t", "#"])
            if self.wild and rng.random() < 0.05:
                line += "  " + payload_comment(rng)
            lines.append(line)
            targets.append(tname)
            self.tensors[tname] = tuple(i if isinstance(i, str) else 0 for i in lhs)
        if self.wild and rng.random() < 0.2:
            rng.shuffle(lines)
        sep = "\n" if rng.random() < 0.9 or not self.wild else rng.choice(["; ", "\r\n", "\n\n", "\n  \n", " ;\n"])
        text = sep.join(lines) + ("\n" if rng.random() < 0.7 else "")
        if self.wild and rng.random() < 0.4:
            text = self.break_slightly(text)
        return text

    def ref(self, free: tuple, extra: list) -> str:
        """A reference to a tensor using the free indices (and maybe summed ones)."""
        rng = self.rng
        name = rng.choice(list(self.tensors))
        pattern = self.tensors[name]
        if not pattern:
            return name
        pool = list(free) + extra
        idx = []
        for p in pattern:
            if p == 0 or rng.random() < 0.04:
                idx.append("0")
            elif pool and rng.random() < 0.8:
                idx.append(rng.choice(pool))
            else:
                idx.append(p)
        if self.wild and rng.random() < 0.05:  # wrong rank
            idx = idx[:-1] if rng.random() < 0.5 and len(idx) > 1 else idx + [self.index()]
        return f"{name}[{','.join(idx)}]"

    def expr(self, free: tuple, depth: int, scalar_only: bool = False) -> str:
        rng = self.rng
        if depth <= 0 or rng.random() < 0.25:
            return self.atom(free, scalar_only)
        kind = rng.random()
        if kind < 0.25:  # product, often with a contraction index
            extra = [self.index()] if rng.random() < 0.5 and not scalar_only else []
            left = self.expr(free, depth - 1, scalar_only) if rng.random() < 0.5 else (
                self.atom(free, scalar_only) if scalar_only else self.ref(free, extra))
            right = self.expr(free, depth - 1, scalar_only) if rng.random() < 0.5 else (
                self.atom(free, scalar_only) if scalar_only else self.ref(free, extra))
            op = rng.choice([" ", " ", " * ", "*", " / "])
            return f"{left}{op}{right}"
        if kind < 0.45:
            op = rng.choice([" + ", " - ", "+", "-"])
            return f"{self.expr(free, depth - 1, scalar_only)}{op}{self.expr(free, depth - 1, scalar_only)}"
        if kind < 0.65:  # call
            f = rng.random()
            fn = (rng.choice(BUILTINS) if f < 0.6 or not self.functions else
                  rng.choice(self.functions) if f < 0.85 else rng.choice(MISSPELLED + ["undefined_f", "g7"]))
            return f"{fn}({self.expr(free, depth - 1, scalar_only)})"
        if kind < 0.75:  # power
            base = self.expr(free, depth - 1, scalar_only)
            if rng.random() < 0.1:
                return f"({base}){rng.choice(HUGE_POWERS)}"
            exp = rng.choice(["2", "3", "2", "0.5", "-1", "(-2)", "1", "0", "(1/2)", "-0.5"]) if rng.random() < 0.85 \
                else f"({self.expr((), 1, True)})"
            return f"({base})^{exp}" if rng.random() < 0.8 else f"({base})**{exp}"
        if kind < 0.82 and not scalar_only:  # explicit sum
            s = self.index()
            body = self.expr(free + (s,), depth - 1)
            if not re.search(rf"[\[,]{re.escape(s)}[\],]", body) and (not self.wild or rng.random() < 0.7):
                extra = f"E{len(self.tensors)}"  # make the summed index occur in the body
                self.tensors[extra] = (s,)
                body = f"({body}) {extra}[{s}]"
            more = f",{self.index()}" if rng.random() < 0.2 else ""
            return f"sum[{s}{more}]({body})"
        if kind < 0.9:
            return f"-{self.expr(free, depth - 1, scalar_only)}"
        return f"({self.expr(free, depth - 1, scalar_only)})"

    def atom(self, free: tuple, scalar_only: bool = False) -> str:
        rng = self.rng
        if scalar_only:
            return "x" if rng.random() < 0.7 else self.number()
        r = rng.random()
        if r < 0.7:
            return self.ref(free, [])
        if r < 0.95:
            return self.number()
        return rng.choice(["x", "np", "pi", "E", "e", "I", "oo", "nan", "inf"])

    # -- structural extremes --------------------------------------------------------------
    def long_chain(self) -> str:
        rng = self.rng
        n = rng.randint(60, 120)
        lines = ["A0[i,j] = X[i,k] W[k,j]"]
        for s in range(1, n):
            f = rng.choice(["tanh", "sigmoid", "sin", "", "", "softplus"])
            lines.append(f"A{s}[i,j] = {f}(A{s - 1}[i,j]) + {rng.choice(['0.1', 'X[i,k] W[k,j]', 'b[j]', '1'])}"
                         if rng.random() < 0.8 else f"A{s}[i,j] = A{s - 1}[i,k] V[k,j]")
        lines.append(f"L = A{n - 1}[i,j]^2")
        return "\n".join(lines) + "\n"

    def nested_functions(self) -> str:
        rng = self.rng
        n = rng.randint(20, 70)
        lines = ["f0(x) = x^2 + 1"] if rng.random() < 0.8 else []
        for s in range(1, n):
            body = rng.choice([f"f{s - 1}(x) + 1", f"f{s - 1}(x)^2", f"f{s - 1}(f{s - 1}(x))", f"sin(f{s - 1}(x))",
                               f"f{s - 1}(x) / 2", f"x f{s - 1}(x)"])
            if s > 12 and "f{s - 1}(f{s - 1}" in body:
                body = f"f{s - 1}(x) + x"
            lines.append(f"f{s}(x) = {body}")
        lines.append(f"L = f{n - 1}(w[i] x[i])" if rng.random() < 0.7 else f"L = f{n - 1}(w) w")
        return "\n".join(lines) + "\n"

    def deep_nesting(self) -> str:
        rng = self.rng
        n = rng.choice([20, 50, 99, 100, 101, 150, 250, 1000])
        kind = rng.choice(["paren", "call", "neg", "sum", "chain", "power", "user"])
        if kind == "paren":
            body = "(" * n + "x[i]" + ")" * n
        elif kind == "call":
            body = "tanh(" * n + "x[i]" + ")" * n
        elif kind == "neg":
            body = "-" * n + "x[i]"
        elif kind == "sum":
            body = "".join(f"sum[j{k}](" for k in range(n)) + "x[i]" + ")" * n
        elif kind == "chain":
            body = " + ".join(["x[i]"] * n)
        elif kind == "power":
            body = "^".join(["x[i]"] + ["1"] * n)
        else:
            return "g(x) = " + "sin(" * n + "x" + ")" * n + "\nL = g(x[i]) x[i]\n"
        return f"L = {body} x[i]\n" if rng.random() < 0.5 else f"y[i] = {body}\n"

    def break_slightly(self, text: str) -> str:
        rng = self.rng
        for _ in range(rng.randint(1, 2)):
            if not text:
                break
            pos = rng.randrange(len(text) + 1)
            r = rng.random()
            if r < 0.5:
                text = text[:pos] + rng.choice(ODD_CHARS + list("[](),=+-*/^#;0_ \n")) + text[pos:]
            elif r < 0.8:
                text = text[:pos] + text[pos + 1:]
            else:
                text = text[:pos] + text[pos:pos + rng.randint(1, 6)] * 2 + text[pos + rng.randint(1, 6):]
        return text


# -- mutation of the example programs ------------------------------------------------------
_MTOKEN = re.compile(r"\s+|#[^\n]*|\d+\.?\d*(?:[eE][-+]?\d+)?|[A-Za-z_][A-Za-z0-9_]*|\*\*|.", re.S)


def seed_programs() -> list[str]:
    texts = []
    for path in sorted(DERIVATIONS.glob("*.ein")):
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if not ln.startswith("#")]
        texts.append("\n".join(lines) + "\n")
    return texts


class Mutator:
    """Token-level mutations (delete / duplicate / swap / change index / insert character)."""

    def __init__(self, rng: random.Random, seeds: list[str]):
        self.rng, self.seeds = rng, seeds

    def mutate(self) -> str:
        rng = self.rng
        text = rng.choice(self.seeds)
        if rng.random() < 0.2:  # splice lines from another program
            other = rng.choice(self.seeds).splitlines()
            lines = text.splitlines()
            lines.insert(rng.randrange(len(lines) + 1), rng.choice(other))
            text = "\n".join(lines) + "\n"
        for _ in range(rng.choice([1, 1, 1, 2, 2, 3, 5])):
            text = self.once(text)
        return text

    def once(self, text: str) -> str:
        rng = self.rng
        toks = _MTOKEN.findall(text)
        if not toks:
            return text
        words = [k for k, t in enumerate(toks) if not t.isspace()]
        if not words:
            return text
        k = rng.choice(words)
        r = rng.random()
        if r < 0.12:
            del toks[k]
        elif r < 0.22:
            toks.insert(k, toks[k])
        elif r < 0.32:
            j = rng.choice(words)
            toks[k], toks[j] = toks[j], toks[k]
        elif r < 0.52:  # change an index inside brackets
            idx = [m for m in words if re.fullmatch(r"[A-Za-z]\w*|\d+", toks[m]) and m > 0 and
                   toks[m - 1] in ("[", ",")]
            if idx:
                m = rng.choice(idx)
                toks[m] = rng.choice(["0", "0", "1", "2"] + INDEX_NAMES[:16] + [toks[rng.choice(idx)]])
        elif r < 0.62:  # insert a character
            toks.insert(k, rng.choice(ODD_CHARS + list("[](),=+-*/^#;0 \n")))
        elif r < 0.7:  # a name to a colliding one (everywhere, to stay consistent)
            names = [t for t in toks if re.fullmatch(r"[A-Za-z]\w*", t)]
            if names:
                old, new = rng.choice(names), rng.choice(COLLIDING)
                toks = [new if t == old else t for t in toks]
        elif r < 0.77:  # a number to a special one
            nums = [m for m in words if re.fullmatch(r"\d[\d.eE+-]*", toks[m])]
            if nums:
                toks[rng.choice(nums)] = rng.choice(SPECIAL_NUMBERS)
        elif r < 0.83:  # a function to another one
            calls = [m for m in words if m + 1 < len(toks) and toks[m + 1] == "(" and toks[m][0].isalpha()]
            if calls:
                toks[rng.choice(calls)] = rng.choice(BUILTINS + MISSPELLED)
        elif r < 0.88:  # a power
            toks.insert(k + 1, rng.choice(HUGE_POWERS + ["^2", "^-1", "^0.5"]))
        elif r < 0.92:  # wrap in a call / sum
            toks.insert(k, rng.choice(["tanh(", "sum[q](", "(", "exp(", "g("]))
            toks.insert(min(len(toks), k + 2), ")")
        elif r < 0.95:
            toks.insert(k, "  " + payload_comment(rng) + "\n")
        else:  # duplicate a whole line
            lines = "".join(toks).split("\n")
            m = rng.randrange(len(lines))
            lines.insert(m, lines[m])
            return "\n".join(lines)
        return "".join(toks)


# -- the hand-picked inputs -----------------------------------------------------------------
FIXED_INPUTS = [
    "L = x[i] x[i] # \r__import__('os').system('touch @MARKER@')\rdef _f():\r    #\n",
    "L = x[i] x[i]  # \ropen('@MARKER@', 'w').close()\r\n",
    "y[i] = x[i] # \r__import__('pathlib').Path('@MARKER@').touch()\rif 0:\r    #\n",
    "L = 9^9^9 x[i] x[i]\n",
    "L = 2^2^2^2^2^2 x[i] x[i]\n",
    "L = 1e100000000 x[i] x[i]\n",
    "L = x[i]^1e300\n",
    "L = (x[i] x[i])^1e300\n",
    "L = " + "7" * 5000 + " x[i] x[i]\n",
    "L = 0/0 x[i] x[i]\n",
    "L = 1e400/3 x[i] x[i]\n",
    "L = exp(1) x[i] x[i]\n",
    "L = x[i]^(9^9^9)\n",
    "L = x[i]^0 + x[i]\n",
    "L = 0^x[i]\n",
    "L = x[i]^" + "9" * 400 + "\n",
    "L = (x[i] - x[i])^-1\n",
    "L = x\n",
    "L = x x\n",
    "y[0] = x[i] x[i]\n",
    "y[i,0] = x[i,0]\n",
    "y[0,0] = x[0,0]\n",
    "L = x[0]\n",
    "L = X[i,i]\n",
    "y[i] = X[i,i]\n",
    "L = np x[i] x[i]\n",
    "L = np_ np x[i]\n",
    "np[i] = x[i]\nnp_[i] = np[i] x[i]\nL = np_[i] np[i]\n",
    "np_ = x[i] x[i]\nL = np np_\n",
    "oe[i] = x[i]\nL = oe[i] oe[i]\n",
    "grad_x = x[i] x[i]\nL = grad_x x[j] x[j]\n",
    "grad_x[i] = x[i]\nL = grad_x[i] x[i]\n",
    "L = grad_x[i] x[i]\n",
    "t1[i] = x[i]\nL = t1[i] t1[i]\n",
    "Indexed[i] = x[i]\nL = Indexed[i] Add[i] Pow\n",
    "KroneckerDelta[i,j] = x[i] x[j]\nL = KroneckerDelta[i,j] Symbol[i,j]\n",
    "lambda[i] = def[i] import[i]\nL = lambda[i] lambda[i]\n",
    "L = __class__ x[i]\n",
    "L = _c0 x[i]\n",
    "L = _full x[i]\n",
    "c0[i] = x[i]\nL = c0[i] c0[i]\n",
    "full[i] = x[i]\nL = full[i] x[i]\n",
    "x = y[i] y[i]\nL = x x\n",
    "f(x) = x^2\nL = f(x)\n",
    "f(x) = x[i]\nL = f(y[i])\n",
    "f(y) = x^2\nL = f(z[i])\n",
    "f(x) = f(x)\nL = f(y[i])\n",
    "f(x) = g(x)\ng(x) = f(x)\nL = f(y[i])\n",
    "exp(x) = x^2\nL = exp(y[i])\n",
    "sum(x) = x\nL = sum(y[i])\n",
    "L = sum[i](x[i])\n",
    "L = sum[i,i](x[i])\n",
    "L = sum[i](sum[i](x[i]))\n",
    "y[i] = sum[i](x[i])\n",
    "L = sum[j](x[i])\n",
    "L = expp(x[i])\n",
    "L = undefined_fn(x[i]) x[i]\n",
    "L = \x00x[i]\n",
    "L = x[i]\x0bx[i]\n",
    "L = x[i]\x0cx[i]\n",
    "L = x[i]\u2028x[i]\n",
    "L = x[i]\r\n",
    "L = x[i] x[i]\rM = L\n",
    "L = μ[i] x[i]\n",
    "Ŷ[i] = x[i]\nL = Ŷ[i]^2\n",
    "L = W_1[i] x[i]\n",
    "A" * 5000 + "[i] = x[i]\nL = " + "A" * 5000 + "[i]^2\n",
    "L = x[" + "i" * 5000 + "]^2\n",
    "L = " + "(" * 99 + "x[i]" + ")" * 99 + " x[i]\n",
    "L = " + "(" * 101 + "x[i]" + ")" * 101 + "\n",
    "L = " + "(" * 5000 + "x[i]" + ")" * 5000 + "\n",
    "L = " + "-" * 5000 + "x[i]\n",
    "L = " + " + ".join(["x[i]"] * 300) + "\n",
    "L = " + " ".join(["x[i]"] * 300) + "\n",
    "L = " + " ".join(f"x{k}[i]" for k in range(60)) + "\n",
    "L = " + "^".join(["x[i]"] * 50) + "\n",
    "L = " + "tanh(" * 99 + "x[i]" + ")" * 99 + "\n",
    "\n".join(f"f{k}(x) = f{k - 1}(x) + x" if k else "f0(x) = x^2" for k in range(60)) + "\nL = f59(w[i] x[i])\n",
    "\n".join(f"f{k}(x) = f{k - 1}(x)^2" if k else "f0(x) = x + 1" for k in range(60)) + "\nL = f59(w[i])\n",
    "\n".join(f"f{k}(x) = f{k - 1}(f{k - 1}(x))" if k else "f0(x) = sin(x)" for k in range(30)) + "\nL = f29(w[i])\n",
    "A0[i,j] = X[i,k] W[k,j]\n" + "\n".join(f"A{k}[i,j] = tanh(A{k - 1}[i,j]) + b[j]" for k in range(1, 100))
    + "\nL = A99[i,j]^2\n",
    "A0[i,j] = X[i,k] W[k,j]\n" + "\n".join(f"A{k}[i,j] = A{k - 1}[i,m] V[m,j]" for k in range(1, 100))
    + "\nL = A99[i,j]^2\n",
    "y[i,j,k,l,m,n,b,d,z,t,u,v] = x[i,j,k,l,m,n,b,d,z,t,u,v]\n",
    "L = x[a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q,r,s,t,u,v,w,y,z,aa,bb,cc] x[a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q,r,s,t,u,v,w,y,z,aa,bb,cc]\n",
    "L = x[i] / (y[h] y[h])\n",
    "L = (y[h] y[h])^(-1) x[i]\n",
    "L = x[i] 0\n",
    "L = 0\n",
    "L = 1 + 0 x[i]\n",
    "y[i] = 0 x[i]\n",
    "y[i] = 1\n",
    "L = relu(x[i]) abs(x[i])\n",
    "L = sqrt(x[i] x[i])\n",
    "L = log(x[i]^2) exp(-x[i])\n",
    "L = x[i]^x[i]\n",
    "L = 2^x[i]\n",
    "L = x[i]^y[i]\n",
    "L = x[i]^(y[j] y[j])\n",
    "L = x[i]^-1 x[i]^-2\n",
    "y[i] = x[i]^0.5\n",
    "L = -x[i]^2\n",
    "L = --x[i]^2\n",
    "L = x[i]**2**-1\n",
    "L = einsum(\"i,i->\", x, x)\n",
    "X is 3 x 4\nL = X X.T\n",
    "",
    "\n\n\n",
    "# only a comment",
    "L =",
    "= x[i]",
    "L[] = x[i]",
    "L[i,] = x[i]",
    "L[,] = x",
    "L = x[]",
    "L = x[-1]",
    "L = x[1.5]",
    "L = x[1e3]",
    "L = x[" + "9" * 5000 + "]",
    "L = x[99999999999999999999] y",
    "y[99999999999999999999] = x[0]",
    "y[1] = x[i] x[i]\n",
    "y[3,i] = x[i]\n",
    "L = x[2] x[i]\n",
    "L = x[i] x[i] x[i]\n",
    "L = x[i] y[i] z[i] w[i]\n",
    "L[i,i] = x[i]\n",
    "L[i] = x[j]\n",
    "L = L\n",
    "L = x[i]\nL = L + 1\n",
    "L = x[i]\nL[i] = x[i]\n",
    "L = M\nM = x[i]\n",
    "L[i] = x[i]\nM = L L\n",
    "L[i] = x[i]\nM = L[i,j]\n",
    "f(x) = x\nf[i] = x[i]\nL = f(f[i])\n",
    "x(x) = x\nL = x(y[i])\n",
    "f(x) = x\nL = f\n",
    "f(x) = x\nL = f[i]\n",
    "f(i) = i\nL = f(y[i])\n",
    "f(x)(y) = x\n",
    "f(x) = \nL = 1\n",
    "L = f(x[i], y[i])\n",
    "L = (x[i]\n+ y[i])\n",
    "L = [x[i]]\n",
    "L = x[i][j]\n",
    "L = x[[i]]\n",
    "L = x[i] = y[i]\n",
    "L = x[i] ;; M = L\n",
    "\ufeffL = x[i] x[i]\n",
    # found by the fuzzer (minimized)
    "b(x) = x\nc(x) = x b(x)\nd(x) = c(x)\nL = d(w[i] v[i])\n",
    "K[z] = V[z,z] - V[z,z]\nW = X[k]\nC = K[z]\n",
    "G[k] = O[k]\n",
    "L = 0^x[i]\n",
    "L = self x\n",
    "L = (3 y)^(-1e300)\n",
    "\n".join(["A1[j] = tanh(b[j])"] + [f"A{k}[j] = tanh(A{k - 1}[j] + b[j])" for k in range(2, 10)]) + "\nL = A9[j]\n",
]


# ---------------------------------------------------------------------------------------
# evaluating one input (runs inside the worker)
# ---------------------------------------------------------------------------------------

class Hang(BaseException):
    """Raised by SIGPROF (the CPU-time limit) inside the worker; a BaseException so `except Exception` cannot eat it."""


class _Wrong(Exception):
    pass


def _innermost_einmlp_frame(tb) -> str:
    frames = traceback.extract_tb(tb)
    inner = ""
    for fr in frames:
        if fr.filename.startswith("<einmlp"):  # the generated code
            inner = f"<generated code>:{fr.lineno}"
        elif "/einmlp/" in fr.filename.replace("\\", "/"):
            inner = f"{Path(fr.filename).name}:{fr.name}:{fr.lineno}"
    if not inner and frames:
        fr = frames[-1]
        inner = f"{Path(fr.filename).name}:{fr.name}:{fr.lineno}"
    return inner


def _tb_tail(tb, n: int = 8) -> str:
    return "".join(traceback.format_list(traceback.extract_tb(tb)[-n:]))


class _UF:
    def __init__(self):
        self.parent: dict = {}

    def find(self, a):
        self.parent.setdefault(a, a)
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[ra] = rb


def infer_shapes(prog, rng: random.Random):
    """Sizes for every input and target axis: one size per class of axes an index ties together.

    Each (tensor, axis) is a slot; an index name used in one statement ties its slots
    together. A literal index on a left-hand side makes its class size 1; a literal k on a
    right-hand side needs size > k. Classes get distinct sizes where possible (2, 3, 4, ...),
    so a mixed-up axis shows as a shape or value error.
    """
    import dataclasses  # noqa: PLC0415

    from einmlp.syntax import Ref  # noqa: PLC0415

    uf, need_min, forced_one = _UF(), defaultdict(int), set()

    def walk(expr, stmt):
        """Every Ref in a syntax tree, whatever node types the tree has."""
        if isinstance(expr, Ref):
            for a, i in enumerate(expr.indices):
                slot = (expr.name, a)
                uf.find(slot)
                if isinstance(i, str):
                    uf.union(slot, ("#", stmt, i))
                elif isinstance(i, int):
                    need_min[slot] = max(need_min[slot], min(int(i), 50) + 1)
        elif dataclasses.is_dataclass(expr):
            for f in dataclasses.fields(expr):
                walk(getattr(expr, f.name), stmt)
        elif isinstance(expr, (tuple, list)):
            for e in expr:
                walk(e, stmt)

    for s, st in enumerate(prog.syntax.statements):
        for a, i in enumerate(st.indices):
            slot = (st.name, a)
            uf.find(slot)
            if isinstance(i, str):
                uf.union(slot, ("#", s, i))
            else:
                forced_one.add(slot)
        walk(st.expr, s)
    size_of_root: dict = {}
    mins: dict = defaultdict(int)
    ones = set()
    for slot, m in need_min.items():
        r = uf.find(slot)
        mins[r] = max(mins[r], m)
    for slot in forced_one:
        ones.add(uf.find(slot))
    model = prog.model
    for mode in ("distinct", "two", "one"):  # smaller sizes when the arrays would be too large
        next_size = iter(rng.sample(range(2, 6), 4) + [rng.randint(2, 5) for _ in range(10000)])
        size_of_root.clear()

        def size(slot):
            r = uf.find(slot)
            if r not in size_of_root:
                pick = next(next_size) if mode == "distinct" else 2 if mode == "two" else 1
                size_of_root[r] = 1 if r in ones else max(mins[r], pick)
            return size_of_root[r]

        inputs = {n: tuple(size((n, a)) for a in range(rank)) for n, rank in model.inputs.items()}
        targets = {}
        for n, d in model.definitions.items():
            if n in prog.targets:
                targets[n] = tuple(size((n, a)) for a in range(len(d.indices)))
        if max([_numel(s) for s in list(inputs.values()) + list(targets.values())], default=1) <= MAX_ELEMENTS:
            break
    return inputs, targets


MAX_ELEMENTS = 4096      # per array the fuzzer makes
MAX_JACOBIAN = 200_000   # elements of a derivative the fuzzer asks einmlp to compute


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _arrays(shapes: dict, rng, positive: bool):
    import numpy as np  # noqa: PLC0415

    out = {}
    for n, shp in shapes.items():
        if positive:
            out[n] = rng.uniform(0.5, 1.5, size=shp)
        else:
            out[n] = rng.standard_normal(size=shp)
        out[n] = np.asarray(out[n], dtype=float)
    return out


def _picked(fn, key):
    """fn's result under `key`, as a function of the arrays (a closure: any input name may be passed)."""
    return lambda **arrays: fn(**arrays)[key]


def _fd_compare(value_fn, grad, arrays, wrt, rng, what: str, value_shape=None, reference=None, undefined=None,
                derivative_fn=None):
    """Compare `grad` (shape value.shape + wrt.shape) with central differences of value_fn at a few entries.

    `value_shape` is the shape the value should have (the left-hand side's); a value of the
    wrong shape but the right size is reshaped, as that bug is reported on its own.
    `reference()`, where given, is the same derivative by independent autodiff (autograd over
    tests/oracle.py): a non-finite entry where finite differences are finite is not counted
    wrong if the reference is non-finite there too. sqrt(Y - Y) is 0 for every Y, yet its chain
    rule is inf - inf = nan in autograd, jax and torch as in einmlp: `singular`.
    `undefined()`, where given, says where the value of the program's target is not a finite
    real number in exact arithmetic (oracle.undefined_entries, 700 digits): a non-finite entry
    there is `singular` too, though floats rounded the value to a finite one.
    `derivative_fn(**arrays)`, where given, recomputes `grad`: a derivative that disagrees with
    finite differences and changes by more than 1e-3 of itself when `wrt` moves by 1e-12 of
    itself is `ill-conditioned`. sin(f14(u)) with f14(u) ~ 1e50 varies by 1e-12 around 2 in value
    but has a derivative of 1e45 whose sign floats cannot tell (nor can autograd: another sign).
    A derivative where the value does not move at all under any step, and that independent
    autodiff gives too, is `absorbed`: cos(E - 1e300) is one float for every E near 1, as E is
    below the last digit of 1e300, yet its chain rule is -sin(E - 1e300) in einmlp and autograd
    alike. A locally flat value with a derivative that autodiff does not give is still wrong.
    """
    import numpy as np  # noqa: PLC0415

    found: list = []

    def reference_at(idx):
        """The reference derivative at `wrt[idx]` (computed once), or None where there is none."""
        if reference is None:
            return None
        if not found:
            try:
                found.append(np.asarray(reference(), dtype=float))
            except Exception:  # noqa: BLE001  (the oracle does not read every input)
                found.append(None)
        if found[0] is None:
            return None
        return found[0][(Ellipsis,) + tuple(idx)] if idx else found[0]

    def nonfinite_in_reference(idx, where) -> bool:
        r = reference_at(idx)
        if r is None:
            return False
        if np.shape(r) == np.shape(where) and bool(np.all(~np.isfinite(r)[where])):
            return True
        return undefined_at(where)

    def agrees_with_reference(idx, g, where) -> bool:
        """Whether independent autodiff gives einmlp's (finite) derivative at `where` to 1e-9."""
        r = reference_at(idx)
        if r is None or np.shape(r) != np.shape(g):
            return False
        r, g = np.asarray(r)[where], np.asarray(g)[where]
        return bool(np.all(np.isfinite(r)) and np.all(np.abs(r - g) <= 1e-9 * np.maximum(np.abs(r), 1e-300)))

    exact: list = []

    def undefined_at(where) -> bool:  # log(s^1e-300)^1e-300 is 0 in floats, complex in exact arithmetic
        if undefined is None:
            return False
        if not exact:
            exact.append(undefined())
        mask = exact[0]
        if mask is None:
            return False
        mask = np.asarray(mask)
        if mask.ndim == 0:  # a scalar target undefined: so is each of its derivatives
            return bool(mask)
        return mask.shape == np.shape(where) and bool(np.all(mask[where]))

    def value(**a):
        v = np.asarray(value_fn(**a), dtype=float)
        return v.reshape(value_shape) if value_shape is not None and v.size == _numel(value_shape) else v

    base = value(**arrays)
    w0 = arrays[wrt]
    if not np.all(np.isfinite(base)) or np.max(np.abs(base), initial=0.0) > 1e8:
        return "nonfinite"
    # An infinity inside, from an overflow (C^1000 makes G C / sqrt(sum C^1000) exactly 0 nearby) or
    # a division by zero (0^-0.7 makes softplus(-exp(0^-0.7 + h)) 0 for every h, and its chain rule
    # sigmoid(-inf) * -inf = 0 * inf is nan, in jax and torch too): nothing to compare.
    try:
        with np.errstate(over="raise", divide="raise"):
            value(**arrays)
    except FloatingPointError:
        return "overflow"
    nudged = dict(arrays, **{wrt: w0 * (1 + 1e-12)})  # sin(f(f(x))) with f(x) ~ 1e47: the value is noise
    if np.max(np.abs(value(**nudged) - base), initial=0.0) > 1e-3 * max(1e-300, float(np.max(np.abs(base), initial=0))):
        return "ill-conditioned"
    grad = np.asarray(grad)
    expected_shape = base.shape + w0.shape
    if grad.shape != expected_shape:
        raise _Wrong(f"{what}: shape {grad.shape}, expected {expected_shape} (value {base.shape} + {wrt} {w0.shape})")
    entries = list(np.ndindex(*w0.shape)) if w0.shape else [()]
    rng.shuffle(entries)
    scale = max(1.0, float(np.max(np.abs(base), initial=0.0)))
    checked, singular = 0, False
    def central(idx, h):
        plus, minus = dict(arrays), dict(arrays)
        p, m = w0.copy(), w0.copy()
        p[idx] += h
        m[idx] -= h
        plus[wrt], minus[wrt] = p, m
        return (value(**plus) - value(**minus)) / (2 * h)

    for idx in entries[:6]:
        f1, f2 = central(idx, 1e-4), central(idx, 1e-5)
        if not (np.all(np.isfinite(f1)) and np.all(np.isfinite(f2))):
            continue
        g = grad[(Ellipsis,) + tuple(idx)] if idx else grad
        mag = np.maximum(np.maximum(np.abs(f1), np.abs(f2)), 1e-3 * scale)
        tol = 1e-4 * mag + 1e-6 * scale
        smooth = np.abs(f1 - f2) <= tol  # the two step sizes agree: no kink or blow-up nearby
        if not np.any(smooth):
            continue
        bad = smooth & ~(np.abs(g - f2) <= tol) & ~(np.abs(g - f1) <= tol)
        for h in (1e-3, 1e-2) if np.any(bad) else ():  # rounding in the value (log(1 - sigmoid(27))) fools
            bad &= ~(np.abs(g - central(idx, h)) <= 1e-3 * mag + 1e-6 * scale)  # small steps: a larger one agrees
        bad |= smooth & ~np.isfinite(g)
        if np.any(nonfinite := smooth & ~np.isfinite(g)) and nonfinite_in_reference(idx, nonfinite):
            bad &= ~nonfinite
            singular = True
        if np.any(bad) and np.all(f1[bad] == 0) and np.all(f2[bad] == 0) and agrees_with_reference(idx, g, bad):
            return "absorbed"
        if np.any(bad) and derivative_fn is not None:
            again = np.asarray(derivative_fn(**nudged), dtype=float)
            if again.shape == grad.shape and np.all(np.isfinite(again)) and np.all(np.isfinite(grad)) and \
                    np.max(np.abs(again - grad)) > 1e-3 * np.max(np.abs(grad)):
                return "ill-conditioned"
        if np.any(bad):
            k = np.argwhere(bad)[0]
            k = tuple(int(v) for v in k)
            raise _Wrong(f"{what}: at {wrt}{list(idx)} output{list(k)} compiled {np.asarray(g)[k]!r} "
                         f"vs finite differences {np.asarray(f2)[k]!r}")
        checked += 1
    return "singular" if singular else "checked" if checked else "nonsmooth"


def evaluate(text: str, seed: int) -> dict:
    """Run the pipeline on one input; returns the classification record."""
    import numpy as np  # noqa: PLC0415

    import einmlp  # noqa: PLC0415

    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    state = {"stage": "parse", "worst": "OK", "detail": None, "findings": [], "verified": Counter()}

    def note(category, detail):
        if SEVERITY[category] > SEVERITY[state["worst"]]:
            state["worst"], state["detail"] = category, detail
        if category in BAD:
            key = bucket_key(category, detail)
            if all(bucket_key(f["category"], f["detail"]) != key for f in state["findings"]):
                state["findings"].append({"category": category, "detail": detail})

    def run(stage, fn):
        """Run one step; clean errors are noted and give None, other exceptions INTERNAL."""
        state["stage"] = stage
        try:
            value = fn()
            if stage.startswith("fd-"):  # how many derivatives were compared with finite differences
                state["verified"][f"{stage}:{value}"] += 1
            return value, None
        except Hang:
            raise
        except einmlp.EinmlpError as exc:
            note("ERROR", {"stage": stage, "type": type(exc).__name__, "message": str(exc)[:300]})
            return None, exc
        except _Wrong as exc:
            note("WRONG", {"stage": stage, "type": "WRONG", "message": str(exc)[:500], "frame": stage})
            return None, exc
        except RecursionError as exc:  # keep the traceback short
            note("INTERNAL", {"stage": stage, "type": type(exc).__name__, "message": str(exc)[:300],
                              "frame": _innermost_einmlp_frame(exc.__traceback__),
                              "traceback": _tb_tail(exc.__traceback__, 6)})
            return None, exc
        except Exception as exc:  # noqa: BLE001
            note("INTERNAL", {"stage": stage, "type": type(exc).__name__, "message": str(exc)[:500],
                              "frame": _innermost_einmlp_frame(exc.__traceback__),
                              "traceback": _tb_tail(exc.__traceback__)})
            return None, exc

    try:
        prog, err = run("parse", lambda: einmlp.parse(text))
        if prog is None:
            return _result(state)
        # touch the public surface
        shapes, err = run("infer-shapes", lambda: infer_shapes(prog, rng))
        if shapes is None:
            return _result(state)
        in_shapes, target_shapes = shapes
        positive = rng.random() < 0.75
        arrays = _arrays(in_shapes, nrng, positive)

        def autodiff(w, order=1):  # the same derivative by autograd over the oracle, asked for only if needed
            return lambda: oracle.derivative(text, arrays, of, w, order=order)

        def undefined():  # where the target's exact value is not a finite real number, asked for only if needed
            return oracle.undefined_entries(text, arrays, of)
        targets = list(prog.targets)
        of = targets[-1] if rng.random() < 0.8 or not targets else rng.choice(targets)
        # forward values of (some of) the targets: shape == left-hand side's shape
        for t in [of] + rng.sample(targets, min(3, len(targets))):
            fwd, err = run("compile-forward", lambda t=t: prog.compile(t))
            if fwd is None:
                continue
            val, err = run("call-forward", lambda fwd=fwd: fwd(**arrays))
            if val is None:
                continue
            want = target_shapes.get(t)
            got = np.shape(val)

            def shape_check(got=got, want=want, t=t):
                if want is not None and tuple(got) != tuple(want):
                    raise _Wrong(f"forward value of {t} has shape {tuple(got)}, left-hand side says {want}")
            run("forward-shape", shape_check)
        forward, err = run("compile-forward", lambda: prog.compile(of))
        if forward is not None and rng.random() < 0.3 and arrays:  # float32 in, float32 out
            arrays32 = {n: a.astype(np.float32) for n, a in arrays.items()}
            v32, err = run("call-forward-float32", lambda: forward(**arrays32))

            def dtype_check(v32=v32):
                if v32 is not None and np.asarray(v32).dtype != np.float32:
                    raise _Wrong(f"dtype: float32 inputs gave a {type(v32).__name__} of dtype {np.asarray(v32).dtype}")
            run("forward-dtype", dtype_check)
        names = list(prog.inputs)
        rng.shuffle(names)
        for k, w in enumerate(names[:6]):
            d, err = run("grad", lambda w=w: prog.grad(w, of=of))
            if d is None:
                continue
            if rng.random() < 0.25:
                run("display", lambda d=d: (d.index_form, d.matrix_form, d.latex(), d.steps))
            of_shape, w_shape = target_shapes.get(of, ()), in_shapes.get(w, ())
            if _numel(of_shape) * _numel(w_shape) ** 2 > MAX_JACOBIAN:  # too big to compute and check
                continue
            fn, err = run("compile-grad", lambda d=d: d.compile())
            if fn is None:
                continue
            g, err = run("call-grad", lambda fn=fn: fn(**arrays))
            if g is None or forward is None:
                continue
            run("fd-grad", lambda g=g, w=w, fn=fn: _fd_compare(forward, g, arrays, w, rng, f"d{of}/d{w}",
                                                               target_shapes.get(of), autodiff(w), undefined, fn))
            if rng.random() < 0.1:
                run("check", lambda d=d: einmlp.check(d, arrays))
            if k == 0 and rng.random() < 0.3:
                h, err = run("hessian", lambda w=w: prog.hessian(w, of=of))
                if h is None:
                    continue
                if rng.random() < 0.2:
                    run("display", lambda h=h: (h.index_form, h.matrix_form, h.latex()))
                hf, err = run("compile-hessian", lambda h=h: h.compile())
                if hf is None:
                    continue
                hv, err = run("call-hessian", lambda hf=hf: hf(**arrays))
                if hv is None:
                    continue
                with np.errstate(all="ignore"):  # the value is nan here: so is its curvature, whatever the gradient
                    nan_value = forward is not None and not np.all(np.isfinite(np.asarray(forward(**arrays), float)))
                if nan_value:
                    state["verified"]["fd-hessian:nonfinite"] += 1
                    continue
                run("fd-hessian", lambda hv=hv, fn=fn, w=w, hf=hf: _fd_compare(
                    fn, hv, arrays, w, rng, f"hessian d2{of}/d{w}2", target_shapes.get(of, ()) + in_shapes[w],
                    autodiff(w, order=2), undefined, hf))
        if len(names) >= 2 and rng.random() < 0.25:
            sel = names[:3]
            gs, err = run("grad-many", lambda: prog.grad(sel, of=of))
            if gs is not None:
                many, err = run("compile-grad-many", lambda: gs.compile())
                if many is not None:
                    res, err = run("call-grad-many", lambda: many(**arrays))
                    if res is not None and forward is not None:
                        for w in sel:
                            run("fd-grad-many", lambda w=w: _fd_compare(forward, res[w], arrays, w, rng,
                                                                        f"grad([...])[{w}] of {of}",
                                                                        target_shapes.get(of), autodiff(w), undefined,
                                                                        _picked(many, w)))
    except Hang as exc:
        note("HANG", {"stage": state["stage"], "type": "HANG", "message": "ran past the time limit",
                      "frame": _innermost_einmlp_frame(exc.__traceback__), "traceback": _tb_tail(exc.__traceback__)})
    return _result(state)


def _result(state) -> dict:
    return {"category": state["worst"], "detail": state["detail"], "findings": state["findings"],
            "verified": dict(state["verified"])}


# ---------------------------------------------------------------------------------------
# the worker process and the driver
# ---------------------------------------------------------------------------------------

def worker_main(time_limit: float, memory_gb: float) -> None:
    """Read one JSON job per line from stdin; answer one JSON line on the saved stdout."""
    import resource  # noqa: PLC0415

    try:
        limit = int(memory_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ValueError, OSError):
        pass
    out = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # anything printed by the code under test must not corrupt the protocol
    os.dup2(devnull, 2)

    import warnings  # noqa: PLC0415

    warnings.simplefilter("ignore")
    import einmlp  # noqa: F401, PLC0415  (warm up)

    def on_alarm(signum, frame):
        raise Hang()

    signal.signal(signal.SIGPROF, on_alarm)  # CPU time of the process, all threads
    out.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        job = json.loads(line)
        signal.setitimer(signal.ITIMER_PROF, time_limit)
        try:
            result = evaluate(job["text"], job["seed"])
        except Hang:
            result = {"category": "HANG", "detail": {"stage": "?", "type": "HANG", "message": "ran past the limit",
                                                     "frame": ""}}
        except BaseException as exc:  # noqa: BLE001  (MemoryError and friends while classifying)
            result = {"category": "INTERNAL", "detail": {"stage": "driver", "type": type(exc).__name__,
                                                         "message": str(exc)[:300],
                                                         "frame": _innermost_einmlp_frame(exc.__traceback__),
                                                         "traceback": _tb_tail(exc.__traceback__)}}
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)
        out.write(json.dumps(result) + "\n")


class Runner:
    """One worker subprocess at a time; restarts it after a hang or a crash."""

    def __init__(self, time_limit: float = 5.0, memory_gb: float = 3.0, marker_dir: str | None = None):
        self.time_limit, self.memory_gb = time_limit, memory_gb
        self.proc: subprocess.Popen | None = None
        self.marker_dir = marker_dir or tempfile.mkdtemp(prefix="einmlp-fuzz-")
        self.marker = os.path.join(self.marker_dir, "pwned")
        self.jobs_on_worker = 0

    def start(self):
        # the worker runs in the marker folder: put this checkout first, not whichever einmlp is installed
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   PYTHONHASHSEED="0", PYTHONPATH=path)
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker",
                                      "--time-limit", str(self.time_limit), "--memory-gb", str(self.memory_gb)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                     cwd=self.marker_dir)
        line = self._readline(120)
        if line is None:
            raise RuntimeError("the fuzz worker did not start")
        self.jobs_on_worker = 0

    def _readline(self, timeout: float):
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.proc.stdout.readline()
        return line or None

    def stop(self):
        if self.proc is not None:
            try:
                self.proc.kill()
                self.proc.wait(5)
            except Exception:  # noqa: BLE001
                pass
            self.proc = None

    def run(self, text: str, seed: int) -> dict:
        if self.proc is None or self.proc.poll() is not None or self.jobs_on_worker >= 400:
            self.stop()
            self.start()
        real = text.replace(MARKER, self.marker)
        if os.path.exists(self.marker):
            os.remove(self.marker)
        t0 = time.monotonic()
        try:
            self.proc.stdin.write(json.dumps({"text": real, "seed": seed}) + "\n")
            self.proc.stdin.flush()
            line = self._readline(3 * self.time_limit + 5)
        except (BrokenPipeError, OSError):
            line = None
        elapsed = time.monotonic() - t0
        self.jobs_on_worker += 1
        if line is None:
            crashed = self.proc.poll() is not None
            code = self.proc.returncode
            self.stop()
            if crashed:
                result = {"category": "INTERNAL", "detail": {"stage": "?", "type": f"WorkerCrash(rc={code})",
                                                             "message": "the worker process died", "frame": ""}}
            else:
                result = {"category": "HANG", "detail": {"stage": "?", "type": "HANG",
                                                         "message": "no answer (blocked in C code?)", "frame": ""}}
        else:
            result = json.loads(line)
        result.setdefault("findings", [{"category": result["category"], "detail": result["detail"]}]
                          if result["category"] in BAD else [])
        if os.path.exists(self.marker):
            os.remove(self.marker)
            detail = {"stage": (result.get("detail") or {}).get("stage", "?"), "type": "CODE-EXEC",
                      "message": "marker file created", "frame": ""}
            result["category"], result["detail"] = "CODE-EXEC", detail
            result["findings"].insert(0, {"category": "CODE-EXEC", "detail": detail})
        result["elapsed"] = round(elapsed, 3)
        return result


def bucket_key(cat: str, d: dict | None) -> str:
    """Root-cause bucket: category, exception type and innermost einmlp function."""
    d = d or {}
    if cat == "WRONG":
        msg = d.get("message", "")
        kind = "dtype" if msg.startswith("dtype") else "shape" if "shape" in msg else "value"
        return f"WRONG | {d.get('stage')} | {kind}"
    if cat == "CODE-EXEC":
        return "CODE-EXEC"
    return f"{cat} | {d.get('type')} | {re.sub(r':[0-9]+$', '', d.get('frame') or '')}"


def generate(seed: int, k: int, seeds: list[str]) -> tuple[str, str]:
    """Input number k of a campaign: (kind, text)."""
    rng = random.Random(f"{seed}/{k}")
    if rng.random() < 0.6:
        return "grammar", ProgramGenerator(rng).program()
    return "mutation", Mutator(rng, seeds).mutate()


def campaign(count: int, seed: int = 0, time_limit: float = 5.0, budget: float | None = None,
             fixed: bool = True, progress: bool = False, runner: Runner | None = None) -> dict:
    """Run `count` generated inputs (after the fixed ones); stop early when `budget` seconds are spent."""
    runner = runner or Runner(time_limit)
    seeds = seed_programs()
    counts: Counter = Counter()
    verified: Counter = Counter()  # derivatives compared with finite differences, by outcome
    errors: Counter = Counter()  # the clean errors, by type and first words (to tune the generator)
    buckets: dict[str, dict] = {}
    t0 = time.monotonic()
    inputs = [("fixed", t) for t in FIXED_INPUTS] if fixed else []
    done = retried = 0
    try:
        for k in range(len(inputs) + count):
            if budget is not None and time.monotonic() - t0 > budget:
                break
            kind, text = inputs[k] if k < len(inputs) else generate(seed, k - len(inputs), seeds)
            job_seed = (seed * 1_000_003 + k) % 2**31
            result = runner.run(text, job_seed)
            if result["category"] == "HANG":  # once more, in a fresh worker: a loaded machine stretches CPU time
                again = runner.run(text, job_seed)  # too (shared caches); a slow input is over the limit both times
                if again["category"] != "HANG":
                    retried += 1
                    result = again
            done += 1
            verified.update(result.get("verified") or {})
            cat = result["category"]
            counts[cat] += 1
            if cat == "ERROR":
                d = result.get("detail") or {}
                first = re.sub(r"\s+", " ", re.sub(r"line \d+, column \d+: ", "", str(d.get("message", ""))))
                errors[f"{d.get('type')}: {re.sub(r'[0-9]+', 'N', first)[:50]}"] += 1
            for finding in result["findings"]:
                key = bucket_key(finding["category"], finding["detail"])
                b = buckets.setdefault(key, {"category": finding["category"], "count": 0, "examples": []})
                b["count"] += 1
                b["examples"].append({"text": text, "seed": job_seed, "kind": kind, "detail": finding["detail"]})
                b["examples"].sort(key=lambda e: len(e["text"]))
                del b["examples"][5:]
            if progress and done % 100 == 0:
                rate = done / (time.monotonic() - t0)
                again = f", {retried} over the limit once only" if retried else ""
                print(f"{done} inputs, {rate:.1f}/s, {dict(counts)}{again}", file=sys.stderr, flush=True)
    finally:
        runner.stop()
    elapsed = time.monotonic() - t0
    return {"inputs": done, "seconds": round(elapsed, 1), "per_second": round(done / max(elapsed, 1e-9), 2),
            "counts": {c: counts.get(c, 0) for c in CATEGORIES}, "over_the_limit_once_only": retried,
            "buckets": buckets,
            "errors": dict(errors.most_common(40)), "verified": dict(verified)}


# ---------------------------------------------------------------------------------------
# delta debugging
# ---------------------------------------------------------------------------------------

def _ddmin(parts: list[str], test, joiner: str = "") -> list[str]:
    """Classic ddmin over a list of pieces: the smallest sublist (1-minimal) for which test holds."""
    n = 2
    while len(parts) >= 2:
        chunk = max(1, len(parts) // n)
        subsets = [parts[i:i + chunk] for i in range(0, len(parts), chunk)]
        reduced = False
        for k in range(len(subsets)):
            complement = [p for j, s in enumerate(subsets) if j != k for p in s]
            if complement and test(joiner.join(complement)):
                parts, n, reduced = complement, max(n - 1, 2), True
                break
        if not reduced:
            if n >= len(parts):
                break
            n = min(len(parts), n * 2)
    return parts


_RTOKEN = re.compile(r"\s+|#[^\n]*|\d+\.?\d*(?:[eE][-+]?\d+)?|[A-Za-z_][A-Za-z0-9_]*|\*\*|.", re.S)


def reduce_input(text: str, seed: int, key: str, runner: Runner, max_tests: int = 400) -> str:
    """Shrink text (lines, then tokens, then characters) while it stays in bucket `key`."""
    tests = {"n": 0}
    cache: dict[str, bool] = {}

    def test(candidate: str) -> bool:
        if candidate in cache:
            return cache[candidate]
        if tests["n"] >= max_tests:
            return False
        tests["n"] += 1
        r = runner.run(candidate, seed)
        ok = any(bucket_key(f["category"], f["detail"]) == key for f in r["findings"])
        cache[candidate] = ok
        return ok

    runner.stop()  # a fresh worker: the finding must not depend on earlier inputs
    if not test(text):
        return text  # not reproducible on its own (depends on what the worker ran before)
    lines = text.splitlines(keepends=True)
    text = "".join(_ddmin(lines, test))
    toks = _RTOKEN.findall(text)
    text = "".join(_ddmin(toks, test))
    # simplify: long names and numbers
    for pat, rep in ((r"[A-Za-z]{20,}", "A"), (r"\d{6,}", "9"), (r"\s{2,}", " ")):
        for m in sorted(set(re.findall(pat, text)), key=len, reverse=True):
            cand = text.replace(m, rep)
            if test(cand):
                text = cand
    if len(text) < 300:
        text = "".join(_ddmin(list(text), test))
    return text


def reduce_report(report: dict, runner: Runner, per_bucket: int = 1, hangs: bool = False) -> dict:
    """Shrink the shortest example of each bucket (HANG buckets only with `hangs`: each try costs the limit)."""
    for key, b in report["buckets"].items():
        if b["category"] == "HANG" and not hangs:
            continue
        minimal = []
        for ex in b["examples"][:per_bucket]:
            small = reduce_input(ex["text"], ex["seed"], key, runner)
            runner.stop()
            again = runner.run(small, ex["seed"])
            detail = next((f["detail"] for f in again["findings"] if bucket_key(f["category"], f["detail"]) == key),
                          again.get("detail"))
            minimal.append({"text": small, "seed": ex["seed"], "detail": detail})
            print(f"{key}: {small!r}", file=sys.stderr, flush=True)
        b["minimal"] = minimal
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=1000, help="generated inputs (after the fixed ones)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--report", default=None, help="write the JSON report here")
    ap.add_argument("--time-limit", type=float, default=5.0, help="seconds per input")
    ap.add_argument("--budget", type=float, default=None, help="stop after this many seconds")
    ap.add_argument("--no-fixed", action="store_true", help="skip the hand-picked inputs")
    ap.add_argument("--reduce", default=None, help="a report to reduce: shrink one example per bucket")
    ap.add_argument("--reduce-hangs", action="store_true", help="with --reduce: also shrink HANG buckets (slow)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--memory-gb", type=float, default=3.0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker_main(args.time_limit, args.memory_gb)
        return 0
    if args.reduce:
        report = json.loads(Path(args.reduce).read_text())
        runner = Runner(args.time_limit)
        try:
            report = reduce_report(report, runner, hangs=args.reduce_hangs)
        finally:
            runner.stop()
    else:
        report = campaign(args.count, args.seed, args.time_limit, args.budget, fixed=not args.no_fixed,
                          progress=True)
    print(f"{report['inputs']} inputs in {report['seconds']} s ({report['per_second']}/s)")
    for c in CATEGORIES:
        print(f"  {c:10s} {report['counts'][c]}")
    if report.get("verified"):
        print(f"  derivatives vs finite differences: {report['verified']}")
    for key, b in sorted(report["buckets"].items(), key=lambda kv: -kv[1]["count"]):
        ex = (b.get("minimal") or b["examples"])[0]
        print(f"  [{b['count']:5d}] {key}\n          {ex['text'][:200]!r}")
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=1))
    return 1 if any(report["counts"][c] for c in BAD) else 0


if __name__ == "__main__":
    sys.exit(main())
