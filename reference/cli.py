"""Command-line interface: ``python -m reference <command> [options]``.

Each command lives in its own module, which provides

- ``add_arguments(parser: argparse.ArgumentParser) -> None`` and
- ``run(args: argparse.Namespace) -> int`` (the exit status).

Add a command by adding one line to :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Order is the order shown in --help.
COMMANDS: dict[str, tuple[str, str]] = {
    "walkthrough": ("reference.walkthrough", "watch one query go through the tree: every step of reference/plain.py on 12 points, beside brute force"),
    "demo": ("reference.demo", "train the NumPy dual-encoder oracle with full softmax on a small synthetic dataset"),
    "compare": ("reference.train", "train with every negative miner under one budget; table, JSON, claims (proofs/README.md section 8)"),
    "figures": ("figures.run", "regenerate every figure (PNG) and the CSV behind it"),
    "conformance": ("reference.conformance", "check another implementation (module:object) against the reference; golden vectors"),
    "bench": ("reference.bench", "tree vs brute force at N = 1e4..1e6: build time/memory, exact sampling and top-k speed, logits per query; targets PASS/MISS"),
}

DESCRIPTION = """\
Reference implementation of dynamic-index negative mining for dual encoders
(Monath, Zaheer, Allen, McCallum, AISTATS 2023): a tree index with certified
bounds on the softmax partition function, an exact softmax sampler, exact
top-k, a Nystrom map that carries encoder updates to all targets, and a NumPy
MLP dual encoder used as the correctness oracle.

Run `python -m reference <command> --help` for the options of one command.
"""


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with one sub-parser per command."""
    parser = argparse.ArgumentParser(
        prog="python -m reference",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        doc = (module.__doc__ or help_text).strip()
        p = sub.add_parser(
            name,
            help=help_text,
            description=doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run the chosen command."""
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return int(args._module.run(args) or 0)
    except ValueError as exc:  # bad option values: a clear message, no traceback
        parser.exit(2, f"error: {exc}\n")
    except OSError as exc:  # a file system refusal the checks before the work could not foresee (e.g. disk full)
        parser.exit(2, f"error: {exc}\n")


if __name__ == "__main__":
    raise SystemExit(main())
