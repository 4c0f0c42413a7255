"""Command line: ``paoding-widgets demo`` and ``paoding-widgets prune``.

Why: the README's main job must be one command on a fresh machine (``demo``),
and practitioners prune saved models from scripts (``prune``).  Both drive the
same engine/session as the notebook.  Bad input exits non-zero with one line
saying why; no input or existing output file is ever overwritten without
``--force`` (and the input model never).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any


class CliError(Exception):
    """A one-line reason to exit with status 2."""


def build_parser() -> argparse.ArgumentParser:
    from .engine.strategies import STRATEGIES

    p = argparse.ArgumentParser(prog="paoding-widgets", description="Data-free pruning of Keras models (PAODING).")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="train a small digits model, prune it data-free, print a before/after table")
    d.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
    d.add_argument("--strategy", nargs="+", choices=sorted(STRATEGIES), default=["impact", "certified"])
    d.add_argument("--target", type=float, default=0.5, help="share of hidden units to prune (default 0.5)")
    d.add_argument("--step", type=float, default=0.05, help="share pruned per iteration (default 0.05)")
    d.add_argument("--seed", type=int, default=0)

    r = sub.add_parser("prune", help="prune a saved .keras model data-free and save the smaller model")
    r.add_argument("model", help="the input .keras model (never modified)")
    r.add_argument("--out", required=True, help="output .keras path")
    r.add_argument("--target", type=float, default=0.5, help="share of each layer's units to prune (default 0.5)")
    r.add_argument("--step", type=float, default=0.05, help="share pruned per iteration (default 0.05)")
    r.add_argument("--strategy", choices=sorted(STRATEGIES), default="impact")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--lock", nargs="+", default=[], metavar="NAME", help="layers to leave untouched")
    r.add_argument("--input-range", nargs=2, type=float, default=(0.0, 1.0), metavar=("LOW", "HIGH"),
                   help="the legal input box (default 0 1)")
    r.add_argument("--eval", metavar="DATA.npz", help="test data: an .npz with arrays x and y")
    r.add_argument("--tflite", metavar="OUT.tflite", help="also write a float16 TFLite model")
    r.add_argument("--session", metavar="RUN.paoding", help="also save the session (resumable, with undo)")
    r.add_argument("--force", action="store_true", help="replace existing output files")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            return _demo(args)
        return _prune(args)
    except CliError as exc:
        print(f"paoding-widgets: error: {exc}", file=sys.stderr)
        return 2


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
    """Every output path is valid before any work is done."""
    src = Path(args.model).resolve()
    paths = [(args.out, ".keras", "--out"), (args.tflite, ".tflite", "--tflite"),
             (args.session, None, "--session")]
    seen: set[Path] = set()
    for path, suffix, flag in paths:
        if path is None:
            continue
        p = Path(path).resolve()
        if p == src:
            raise CliError(f"{flag} {path} is the input model; choose another path (the input is never overwritten)")
        if p in seen:
            raise CliError(f"{flag} {path} is used for two outputs")
        seen.add(p)
        if suffix and p.suffix != suffix:
            raise CliError(f"{flag} must end in {suffix}, got {path}")
        if p.exists() and not args.force:
            raise CliError(f"{flag} {path} exists; pass --force to replace it")
        if not p.parent.is_dir():
            raise CliError(f"{flag}: directory {p.parent} does not exist")


def _load_eval(path: str) -> tuple[Any, Any]:
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            for xk, yk in (("x", "y"), ("x_test", "y_test")):
                if {xk, yk} <= keys:
                    return z[xk], z[yk]
    except (OSError, ValueError) as exc:
        raise CliError(f"--eval {path}: cannot read it as .npz ({exc})") from exc
    raise CliError(f"--eval {path} must hold arrays 'x' and 'y', found {sorted(keys)}")


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
    _check_outputs(args)
    eval_data = _load_eval(args.eval) if args.eval else None

    import keras

    from .session import PruningSession, SessionError

    try:
        model = keras.models.load_model(args.model, compile=False)
    except Exception as exc:  # keras raises many types for a bad file
        raise CliError(f"cannot load {args.model} as a Keras model: {str(exc).splitlines()[0]}") from exc
    try:
        session = PruningSession(model, tuple(args.input_range), args.strategy, args.step, args.target, args.seed,
                                 eval_data=eval_data, source_path=args.model)
        for name in args.lock:
            session.lock(name)
        before = session.metrics()
        bar = None if args.quiet else ProgressBar(args.target)
        result = session.run(progress=bar.update if bar else None)
        if bar:
            bar.close()
        after = session.metrics()
        session.export(args.out, overwrite=args.force)
        if args.tflite:
            session.export_tflite(args.tflite, overwrite=args.force)
        if args.session:
            session.save(args.session, overwrite=args.force)
    except SessionError as exc:
        raise CliError(str(exc)) from exc
    print(f"pruned {result.share_pruned:.1%} of prunable units in {result.iterations} iterations "
          f"(stopped: {result.reason}); wrote {args.out}")
    print(_before_after(before, after))
    print(_layer_table(session))
    return 0


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
