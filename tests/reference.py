"""An independent evaluator of a checked program with autograd.numpy.

It reads the syntax tree (explicit sums already made by the summation stage) and
computes values by broadcasting and summing axes, sharing nothing with einmlp's symbolic
derivation, lowering or code generation. autograd differentiates it: the oracle the
derived gradients are compared against.
"""

from __future__ import annotations

import autograd.numpy as anp

from einmlp.syntax import Call, Neg, Num, Ref, SumOver

FUNCTIONS = {
    "exp": anp.exp, "log": anp.log, "tanh": anp.tanh, "sqrt": anp.sqrt, "abs": anp.abs,
    "sin": anp.sin, "cos": anp.cos,
    "sigmoid": lambda x: 0.5 * (1 + anp.tanh(0.5 * x)),  # no overflow for large |x|
    "relu": lambda x: anp.maximum(x, 0.0),
    "softplus": lambda x: anp.logaddexp(0.0, x),
}


def _align(value, indices, order):
    """Lay out `value` (axes named by `indices`) over `order`, inserting size-1 axes."""
    perm = [indices.index(i) for i in order if i in indices]
    value = anp.transpose(value, perm) if perm != list(range(len(perm))) else value
    shape = list(anp.shape(value))
    full, k = [], 0
    for i in order:
        if i in indices:
            full.append(shape[k])
            k += 1
        else:
            full.append(1)
    return anp.reshape(value, full)


class Evaluator:
    def __init__(self, checked, functions_by_name):
        self.checked = checked
        self.defs = {f.name: f for f in checked.functions}
        self.statements = {c.statement.name: c for c in checked.statements}
        self.extra = functions_by_name or {}

    def run(self, arrays: dict, of: str):
        env = dict(arrays)
        for c in self.checked.statements:
            env[c.statement.name] = self.statement(c, env)
            if c.statement.name == of:
                return env[of]
        raise KeyError(of)

    def statement(self, checked, env):
        value, indices = self.expr(checked.expr, env)
        order = [i for i in checked.statement.indices if isinstance(i, str)]
        value = _align(value, indices, order) if order else value
        shape = list(anp.shape(value))
        full, k = [], 0
        for i in checked.statement.indices:
            if isinstance(i, int):
                full.append(1)
            else:
                full.append(shape[k])
                k += 1
        return anp.reshape(value, full) if full else value

    def expr(self, e, env):
        if isinstance(e, Num):
            return float(e.value), []
        if isinstance(e, Ref):
            return self.ref(e, env)
        if isinstance(e, Neg):
            v, ix = self.expr(e.operand, env)
            return -v, ix
        if isinstance(e, Call):
            v, ix = self.expr(e.arg, env)
            return self.call(e.function, v), ix
        if isinstance(e, SumOver):
            v, ix = self.expr(e.body, env)
            axes = tuple(ix.index(i) for i in e.indices)
            return anp.sum(v, axis=axes), [i for i in ix if i not in e.indices]
        a, ia = self.expr(e.left, env)
        b, ib = self.expr(e.right, env)
        order = list(dict.fromkeys(ia + ib))
        a, b = _align(a, ia, order) if ia else a, _align(b, ib, order) if ib else b
        ops = {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b, "/": lambda: a / b,
               "^": lambda: self.power(a, b, e.right)}
        return ops[e.op](), order

    def power(self, a, b, exponent):
        if isinstance(exponent, Num) and float(exponent.value).is_integer():
            n = int(exponent.value)
            result = 1.0
            for _ in range(abs(n)):
                result = result * a
            return result if n >= 0 else 1.0 / result
        return a ** b

    def ref(self, e: Ref, env):
        value = env[e.name]
        if not e.indices:
            return value, []
        index = tuple(i if isinstance(i, int) else slice(None) for i in e.indices)
        value = value[index]
        names = [i for i in e.indices if isinstance(i, str)]
        while len(set(names)) < len(names):  # a repeated index takes the diagonal: mask, then sum
            q = next(k for k, n in enumerate(names) if names.index(n) < k)
            p = names.index(names[q])
            size = anp.shape(value)[p]
            mask_shape = [1] * len(names)
            mask_shape[p] = mask_shape[q] = size
            value = anp.sum(value * anp.reshape(anp.eye(size), mask_shape), axis=q)
            names = names[:q] + names[q + 1:]
        return value, names

    def call(self, name, value):
        if name in FUNCTIONS:
            return FUNCTIONS[name](value)
        if name in self.defs:
            d = self.defs[name]
            v, _ = Evaluator(self.checked, self.extra).expr(d.body, {d.param: value})
            return v
        return self.extra[name](value)
