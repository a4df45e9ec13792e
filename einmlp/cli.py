"""The command line: `einmlp derive | check | shapes | train`. Bad input exits 2 with one line."""

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

from . import __version__
from .api import Program, load
from .codegen import python_source
from .errors import EinmlpError, EinmlpWarning
from .training import METHODS

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


def _program(file: str) -> Program:
    """The program in FILE, or on standard input for `-`."""
    if file != "-":
        return load(file)
    try:
        text = sys.stdin.buffer.read().decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError("standard input is not UTF-8 text") from None
    return Program(text, "<stdin>")


def _derivations(args) -> list:
    """One derivation per --wrt (each named once, in order)."""
    prog = _program(args.file)
    wrts = list(dict.fromkeys(args.wrt))
    if args.hessian:
        if len(wrts) > 1:
            raise UsageError(f"--hessian takes one --wrt, got {len(wrts)}: {', '.join(wrts)}")
        return [prog.hessian(wrts[0], of=args.of)]
    return [prog.grad(w, of=args.of) for w in wrts]


def text_report(d) -> str:
    """Steps, index form, matrix form and einsum plan: what `derive --format text` prints."""
    lines = [f"# {d.label} for {Path(d.program.name).name}", ""]
    for step in d.steps:
        lines += [step.text, ""]
    lines += [f"index form:  {d.label}[{','.join(map(str, d.free))}] = {d.index_form}",
              f"matrix form: {d.matrix_form}", "", "einsum plan:", str(d.plan), ""]
    return "\n".join(lines)


def _pdf(tex: str, output: str | None) -> bytes:
    if not output:
        raise UsageError("--format pdf needs -o FILE")
    if shutil.which("pdflatex") is None:
        raise UsageError("--format pdf needs pdflatex on the PATH (Debian: texlive-latex-base)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "derivation.tex"
        path.write_text(tex, encoding="utf-8")
        run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", path.name],
                             cwd=tmp, capture_output=True, text=True, timeout=120)
        if run.returncode != 0:
            error = next((line for line in run.stdout.splitlines() if line.startswith("!")), "unknown error")
            raise EinmlpError(f"pdflatex failed: {error}")
        return (Path(tmp) / "derivation.pdf").read_bytes()


def _latex(ds: list) -> str:
    from .latex import derivations_latex
    return ds[0].latex(document=True) if len(ds) == 1 else derivations_latex(ds)


def _plan(ds: list):
    """The einsum plan and its function name: one derivative's, or the shared plan of several."""
    if len(ds) == 1:
        return ds[0].plan, "d" + ds[0].of + "_d" + ds[0].wrt
    return ds[0].program.grad([d.wrt for d in ds], of=ds[0].of).plan, "grads_" + ds[0].of


def derive(args) -> int:
    """`einmlp derive`: the derivation(s) in the chosen format."""
    if args.format == "program":  # how einmlp read the program, in the bracket spelling
        _write(_program(args.file).text_form, args.output)
        return 0
    if not args.wrt:
        raise UsageError("derive needs --wrt NAME (the input to differentiate with respect to)")
    ds = _derivations(args)
    if args.format == "pdf":
        pdf = _pdf(_latex(ds), args.output)
        try:
            Path(args.output).write_bytes(pdf)
        except OSError as exc:
            raise UsageError(f"cannot write {args.output}: {exc.strerror}") from None
        return 0
    if args.format == "matrix":
        out = "".join((f"{d.label} = " if len(ds) > 1 else "") + d.matrix_form + "\n" for d in ds)
    elif args.format == "text":
        out = "\n".join(text_report(d) for d in ds)
    elif args.format == "latex":
        out = _latex(ds)
    elif args.format == "einsum":  # runnable with numpy alone
        out = python_source(*_plan(ds), einsum=True)
    else:
        out = python_source(*_plan(ds))
    _write(out, args.output)
    return 0


def _write(text: str, output: str | None) -> None:
    if output:
        try:
            Path(output).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot write {output}: {exc.strerror}") from None
    else:
        sys.stdout.write(text)


def _input_shapes(prog, args) -> dict:
    """The program's declared shapes, overridden by --shape; every input with axes must have one."""
    given = _shapes(args.shape)
    unknown = [n for n in given if n not in prog.inputs]
    if unknown:
        raise UsageError(f"--shape names {', '.join(unknown)}, which {'is' if len(unknown) == 1 else 'are'} "
                         f"not an input (inputs: {', '.join(prog.inputs)})")
    shapes = {**prog.declared_shapes, **given}
    missing = [n for n in prog.inputs if n not in shapes and prog.model.inputs[n] > 0]
    if missing:
        raise UsageError(f"give a --shape for {', '.join(missing)}")
    return shapes


def _random_arrays(prog, args, trained=()) -> dict:
    """Standard normal inputs; arrays to be trained start as a network's would (`train --help`)."""
    arrays = prog.example_arrays(args.seed, **_input_shapes(prog, args))
    for name in trained:
        a = arrays[name]
        arrays[name] = a / math.sqrt(a.shape[0]) if a.ndim >= 2 else np.zeros_like(a)
    return arrays


def check(args) -> int:
    """`einmlp check`: finite differences on random inputs, per --wrt; exit 1 when one disagrees."""
    from .check import check as run_check
    ds = _derivations(args)
    arrays = _random_arrays(ds[0].program, args)
    ok = True
    for d in ds:
        result = run_check(d, arrays, tolerance=args.tolerance)
        print(f"{d.label}: {result}")
        ok = ok and result.ok
    return 0 if ok else 1


def shapes(args) -> int:
    """`einmlp shapes`: the dimension algebra of each statement."""
    prog = _program(args.file)
    print(prog.shapes(**_input_shapes(prog, args)))
    return 0


def _progress(steps: int):
    """A tqdm bar on stderr showing the loss, or a line per tenth of the run when tqdm is not installed."""
    try:
        from tqdm import tqdm
    except ImportError:
        every = max(1, steps // 10)

        def report(step: int, loss: float) -> None:
            if (step + 1) % every == 0 or step + 1 == steps:
                print(f"step {step + 1}/{steps}: loss {loss:.6g}", file=sys.stderr)
        return report, lambda: None
    bars: list = []  # made at the first step, so an error before training prints no empty bar

    def update(step: int, loss: float) -> None:
        if not bars:
            bars.append(tqdm(total=steps, unit="step", file=sys.stderr, dynamic_ncols=True))
        bars[0].set_postfix_str(f"loss {loss:.4g}", refresh=False)
        bars[0].update(1)
    return update, lambda: bars and bars[0].close()


def train(args) -> int:
    """`einmlp train`: gradient descent on random data; exit 1 when the loss diverges."""
    from .training import check_plot, train as run_train
    prog = _program(args.file)
    wrt = list(dict.fromkeys(args.wrt))
    unknown = [w for w in wrt if w not in prog.inputs]
    if unknown:
        raise UsageError(f"--wrt {unknown[0]} is not an input of the program (inputs: {', '.join(prog.inputs)})")
    if args.plot:
        check_plot(args.plot)
    arrays = _random_arrays(prog, args, trained=wrt)
    report, close = _progress(args.steps)
    try:
        fit = run_train(prog, arrays, wrt, lr=args.lr, steps=args.steps, of=args.of, method=args.method,
                        callback=report, backend=args.backend)
    finally:
        close()
    end = "diverged" if fit.diverged else f"{fit.loss:.6g}"
    first = f"{fit.losses[0]:.6g}" if fit.steps else "not finite"
    print(f"{fit.of}: {first} -> {end} after {fit.steps} steps of {fit.method} (lr {fit.lr:g})")
    if args.plot and fit.steps:
        fit.plot(args.plot)
    if args.output:
        try:
            np.savez(args.output, **{name: np.asarray(value) for name, value in fit.arrays.items()})
        except OSError as exc:
            raise UsageError(f"cannot write {args.output}: {exc.strerror}") from None
    return 1 if fit.diverged else 0


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


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"--lr must be a positive number, got {text!r}")
    return value


def _steps(text: str) -> int:
    if not text.isdigit() or len(text) > 9 or int(text) < 1:
        raise argparse.ArgumentTypeError(f"--steps must be a whole number from 1 to 999999999, got {text!r}")
    return int(text)


FILE_HELP = "a .ein program, or - to read it from standard input"
SHAPE_HELP = "an input's shape, e.g. X=10,3 (repeat for each input; scalars need none)"
SEED_HELP = "seed of the random arrays (default 0)"
TRAIN_HELP = ("minimise a scalar loss by gradient descent on random data: inputs are standard normal "
              "(--seed); trained matrices start at N(0, 1/n), n the length of their first axis, "
              "trained vectors and scalars at 0")


def _differentiation(p: argparse.ArgumentParser, verb: str = "differentiate", required: bool = True) -> None:
    p.add_argument("file", help=FILE_HELP)
    p.add_argument("--wrt", action="append", required=required, metavar="NAME",
                   help=f"an input to {verb} with respect to (repeat for several)")
    p.add_argument("--of", metavar="NAME", help="the output to differentiate (default: the last statement)")


def parser() -> argparse.ArgumentParser:
    """The argument parser of the four subcommands."""
    top = _Parser(prog="einmlp", description="Derive gradients in Einstein index notation.")
    top.add_argument("--version", action="version", version=f"einmlp {__version__}",
                     help="print einmlp's version and exit")
    sub = top.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND",
                             help="derive, check, shapes or train (einmlp COMMAND --help tells more)")
    p = sub.add_parser("derive", help="derive and show gradients", description="derive and show gradients")
    _differentiation(p, required=False)
    p.add_argument("--hessian", action="store_true", help="the second derivative instead (one --wrt)")
    p.add_argument("--format", choices=FORMATS, default="text",
                   help="text (steps, forms and plan; the default), latex (a whole document), matrix, "
                        "einsum (runnable np.einsum calls), python (a standalone module), program (the program "
                        "as einmlp read it, in brackets), or pdf (needs -o)")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of standard output")
    p = sub.add_parser("check", help="check gradients against finite differences",
                       description="check gradients against central finite differences on random arrays; "
                                   "exit 1 when one disagrees")
    _differentiation(p)
    p.add_argument("--hessian", action="store_true", help="the second derivative instead (one --wrt)")
    p.add_argument("--shape", action="append", metavar="NAME=D1,D2", help=SHAPE_HELP)
    p.add_argument("--seed", type=_seed, default=0, help=SEED_HELP)
    p.add_argument("--tolerance", type=_tolerance, default=1e-6,
                   help="largest relative error beyond the finite differences' noise floor that passes "
                        "(default 1e-6)")
    p = sub.add_parser("shapes", help="show the dimension algebra of each statement",
                       description="show the dimension algebra of each statement")
    p.add_argument("file", help=FILE_HELP)
    p.add_argument("--shape", action="append", metavar="NAME=D1,D2", help=SHAPE_HELP)
    p = sub.add_parser("train", help="minimise a loss by gradient descent on random data", description=TRAIN_HELP)
    _differentiation(p, "train")
    p.add_argument("--lr", type=_positive, default=0.01, help="learning rate (default 0.01)")
    p.add_argument("--steps", type=_steps, default=1000, help="number of updates (default 1000)")
    p.add_argument("--method", choices=METHODS, default="sgd",
                   help="sgd (plain gradient descent; the default), momentum (0.9) or adam")
    p.add_argument("--shape", action="append", metavar="NAME=D1,D2", help=SHAPE_HELP)
    p.add_argument("--seed", type=_seed, default=0, help=SEED_HELP)
    p.add_argument("--plot", metavar="FILE", help="write the loss per step to FILE (.png, .pdf, .svg; "
                                                    "needs matplotlib: pip install 'einmlp[plot]')")
    p.add_argument("-o", "--output", metavar="FILE", help="save the trained arrays to FILE (numpy .npz)")
    p.add_argument("--backend", choices=["numpy", "numba", "torch", "jax"],
                   help="the array library to train with (default numpy; numba fuses elementwise work)")
    return top


def main(argv=None) -> int:
    """Run the command line; bad input becomes one line on stderr and exit code 2, never a traceback.

    Exit 1 is kept for a result that is not the hoped-for one: `check` ran and a gradient
    disagrees, or `train` ran and the loss diverged.
    """
    args = parser().parse_args(argv)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", EinmlpWarning)
            code = {"derive": derive, "check": check, "shapes": shapes, "train": train}[args.command](args)
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
