"""The command line: `einmlp derive | check | shapes`. Bad input exits 2 with one line."""

from __future__ import annotations

import argparse
import math
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from .api import load
from .codegen import python_source
from .errors import EinmlpError, EinmlpWarning

FORMATS = ("text", "latex", "matrix", "einsum", "python", "program", "pdf")


class UsageError(EinmlpError):
    """A command-line argument that is not well formed."""


MAX_ELEMENTS = 50_000_000  # entries of one random array made for check (400 MB of float64)


def _shape(text: str) -> tuple[str, tuple[int, ...]]:
    name, sep, dims = text.partition("=")
    if not sep or not name.strip():
        raise UsageError(f"--shape expects NAME=D1,D2,..., got {text!r}")
    parts = [d.strip() for d in dims.split(",")] if dims.strip() else []
    if not all(d.isdigit() for d in parts):
        raise UsageError(f"--shape {text!r}: the lengths must be whole numbers separated by commas")
    if any(len(d) > 9 for d in parts):
        raise UsageError(f"--shape {text!r}: a length of {max(parts, key=len)} is too large")
    shape = tuple(int(d) for d in parts)
    if any(d < 1 for d in shape):
        raise UsageError(f"--shape {text!r}: lengths must be positive")
    if math.prod(shape) > MAX_ELEMENTS:
        raise UsageError(f"--shape {text!r}: {math.prod(shape)} entries is more than {MAX_ELEMENTS}")
    return name.strip(), shape


def _shapes(items) -> dict[str, tuple[int, ...]]:
    return dict(_shape(t) for t in items or [])


def _derivation(args):
    prog = load(args.file)
    if args.hessian:
        return prog.hessian(args.wrt, of=args.of)
    return prog.grad(args.wrt, of=args.of)


def text_report(d) -> str:
    """Steps, index form, matrix form and einsum plan: what `derive --format text` prints."""
    lines = [f"# {d.label} for {Path(d.program.name).name}", ""]
    for step in d.steps:
        lines += [step.text, ""]
    lines += [f"index form:  {d.label}[{','.join(map(str, d.free))}] = {d.index_form}",
              f"matrix form: {d.matrix_form}", "", "einsum plan:", str(d.plan), ""]
    return "\n".join(lines)


def _pdf(d, output: str | None) -> bytes:
    if not output:
        raise UsageError("--format pdf needs -o FILE")
    if shutil.which("pdflatex") is None:
        raise UsageError("--format pdf needs pdflatex on the PATH (Debian: texlive-latex-base)")
    with tempfile.TemporaryDirectory() as tmp:
        tex = Path(tmp) / "derivation.tex"
        tex.write_text(d.latex(document=True), encoding="utf-8")
        run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", tex.name],
                             cwd=tmp, capture_output=True, text=True, timeout=120)
        if run.returncode != 0:
            error = next((line for line in run.stdout.splitlines() if line.startswith("!")), "unknown error")
            raise EinmlpError(f"pdflatex failed: {error}")
        return (Path(tmp) / "derivation.pdf").read_bytes()


def derive(args) -> int:
    """`einmlp derive`: the derivation in the chosen format."""
    if args.format == "program":  # how einmlp read the program, in the bracket spelling
        _write(load(args.file).text_form, args.output)
        return 0
    if not args.wrt:
        raise UsageError("derive needs --wrt NAME (the input to differentiate with respect to)")
    d = _derivation(args)
    if args.format == "pdf":
        pdf = _pdf(d, args.output)
        try:
            Path(args.output).write_bytes(pdf)
        except OSError as exc:
            raise UsageError(f"cannot write {args.output}: {exc.strerror}") from None
        return 0
    out = {"text": lambda: text_report(d), "latex": lambda: d.latex(document=True),
           "matrix": lambda: d.matrix_form + "\n",
           "einsum": lambda: python_source(d.plan, _function_name(d), einsum=True),
           "python": lambda: python_source(d.plan, _function_name(d))}[args.format]()
    _write(out, args.output)
    return 0


def _function_name(d) -> str:
    return ("d2" if d.order == 2 else "d") + d.of + "_d" + d.wrt + ("2" if d.order == 2 else "")


def _write(text: str, output: str | None) -> None:
    if output:
        try:
            Path(output).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot write {output}: {exc.strerror}") from None
    else:
        sys.stdout.write(text)


def _random_arrays(prog, shapes: dict, seed: int) -> dict:
    unknown = [n for n in shapes if n not in prog.inputs]
    if unknown:
        raise UsageError(f"--shape names {', '.join(unknown)}, which {'is' if len(unknown) == 1 else 'are'} "
                         f"not an input (inputs: {', '.join(prog.inputs)})")
    missing = [n for n in prog.inputs if n not in shapes and prog.model.inputs[n] > 0]
    if missing:
        raise UsageError(f"give a --shape for {', '.join(missing)}")
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal(shapes.get(n, ())) for n in prog.inputs}


def check(args) -> int:
    """`einmlp check`: finite differences on random inputs; exit 1 when they disagree."""
    from .check import check as run_check
    d = _derivation(args)
    arrays = _random_arrays(d.program, {**d.program.declared_shapes, **_shapes(args.shape)}, args.seed)
    result = run_check(d, arrays, tolerance=args.tolerance)
    print(f"{d.label}: {result}")
    return 0 if result.ok else 1


def shapes(args) -> int:
    """`einmlp shapes`: the dimension algebra of each statement."""
    prog = load(args.file)
    given = _shapes(args.shape)
    unknown = [n for n in given if n not in prog.inputs]
    if unknown:
        raise UsageError(f"--shape names {', '.join(unknown)}, which {'is' if len(unknown) == 1 else 'are'} "
                         f"not an input (inputs: {', '.join(prog.inputs)})")
    shapes = {**prog.declared_shapes, **given}
    missing = [n for n in prog.inputs if n not in shapes and prog.model.inputs[n] > 0]
    if missing:
        raise UsageError(f"give a --shape for {', '.join(missing)}")
    print(prog.shapes(**shapes))
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with einmlp's error style: one line on stderr, exit code 2."""

    def error(self, message: str):
        print(f"einmlp: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _seed(text: str) -> int:
    if not text.isdigit() or len(text) > 9:
        raise argparse.ArgumentTypeError(f"--seed must be a whole number from 0 to 999999999, got {text!r}")
    return int(text)


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"--tolerance must be a number between 0 and 1, got {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    """The argument parser of the three subcommands."""
    top = _Parser(prog="einmlp", description="Derive gradients in Einstein index notation.")
    sub = top.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, helptext in [("derive", "derive and show a gradient"),
                           ("check", "check a gradient against finite differences"),
                           ("shapes", "show the dimension algebra of each statement")]:
        p = sub.add_parser(name, help=helptext)
        p.add_argument("file", help="a .ein program")
        if name != "shapes":
            p.add_argument("--wrt", required=name != "derive", help="the input to differentiate with respect to")
            p.add_argument("--of", help="the output to differentiate (default: the last statement)")
            p.add_argument("--hessian", action="store_true", help="the second derivative instead")
        if name == "derive":
            p.add_argument("--format", choices=FORMATS, default="text",
                           help="text (steps and plan), latex, matrix, einsum (runnable numpy einsum calls), "
                                "python, program (the program as einmlp read it), or pdf (needs -o)")
            p.add_argument("-o", "--output", help="write to FILE instead of standard output")
        else:
            p.add_argument("--shape", action="append", metavar="NAME=D1,D2", help="an input's shape (repeat)")
        if name == "check":
            p.add_argument("--seed", type=_seed, default=0, help="seed of the random arrays (default 0)")
            p.add_argument("--tolerance", type=_tolerance, default=1e-6,
                           help="largest relative error that passes (default 1e-6)")
    return top


def main(argv=None) -> int:
    """Run the command line; bad input becomes one line on stderr and exit code 2, never a traceback.

    Exit 1 is kept for one meaning: `check` ran and the gradient disagrees.
    """
    args = parser().parse_args(argv)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", EinmlpWarning)
            code = {"derive": derive, "check": check, "shapes": shapes}[args.command](args)
        for warning in caught:
            print(f"einmlp: warning: {warning.message}", file=sys.stderr)
        return code
    except EinmlpError as exc:
        print(f"einmlp: error: {str(exc).splitlines()[0]}", file=sys.stderr)
    except MemoryError:
        print("einmlp: error: out of memory: use smaller --shape lengths", file=sys.stderr)
    except Exception as exc:  # a bug of einmlp's: still one line, and not the exit code of a failed check
        print(f"einmlp: error: internal error ({type(exc).__name__}: {str(exc)[:200]}); please report it",
              file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
