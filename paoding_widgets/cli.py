"""Command line: ``paoding-widgets demo`` (and ``python -m paoding_widgets``).

Why: the README's main job must be one command that works on a fresh machine,
with no notebook: it trains a small digits model and prunes it data-free.
"""

from __future__ import annotations

import argparse
import os
import sys


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
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from .demo import format_table, run_demo
        from .engine.pruner import check_fraction

        try:
            check_fraction("--target", args.target)  # before minutes of training, not after
            check_fraction("--step", args.step)
            rows = run_demo(args.model, args.strategy, args.target, args.step, args.seed)
        except ValueError as exc:
            print(f"paoding-widgets: {exc}", file=sys.stderr)
            return 2
        print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
