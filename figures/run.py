"""Regenerate every figure (PNG) and the CSV behind it.

Each figure script in ``figures/fig_*.py`` checks the bound it shows on the
data it plots; a violated bound stops the run with an error naming the figure.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import time
from pathlib import Path

import figures
from reference._validation import check_output_dir


def figure_modules() -> dict[str, object]:
    """Return ``{name: module}`` for every ``figures/fig_*.py``, sorted by name."""
    names = sorted(
        m.name for m in pkgutil.iter_modules(figures.__path__) if m.name.startswith("fig_")
    )
    return {n[len("fig_"):]: importlib.import_module(f"figures.{n}") for n in names}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("figures/out"),
                        help="output directory for PNG and CSV files (default: figures/out)")
    parser.add_argument("--only", nargs="+", metavar="NAME", default=None,
                        help="regenerate only these figures (see --list)")
    parser.add_argument("--quick", action="store_true",
                        help="smaller sizes, for a smoke test (the figures are still checked)")
    parser.add_argument("--list", action="store_true", help="list the figures and exit")
    parser.add_argument("--bench-json", type=Path, default=None, metavar="PATH",
                        help="the JSON of a `bench` run for the scaling figure (default: <out>/bench.json if "
                             "it exists, else a small run of its own), e.g. reference/bench_paper_scale.json")


def run(args: argparse.Namespace) -> int:
    mods = figure_modules()
    if args.list:
        for name, mod in mods.items():
            print(f"{name:32s} {getattr(mod, 'TITLE', '')}")
        return 0
    chosen = list(mods) if args.only is None else args.only
    unknown = [n for n in chosen if n not in mods]
    if unknown:
        raise ValueError(f"--only: expected figure names among {sorted(mods)}, got {unknown}")
    bench_json = getattr(args, "bench_json", None)
    if bench_json is not None and not Path(bench_json).is_file():
        raise ValueError(f"--bench-json: expected an existing JSON file written by `bench`, got {bench_json}")
    out = Path(check_output_dir(args.out, "--out"))  # before any figure is computed
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for name in chosen:
        t = time.perf_counter()
        extra = {"source": bench_json} if name == "scaling" and bench_json is not None else {}
        paths = mods[name].make(out, quick=args.quick, **extra)
        print(f"[figures] {name}: {', '.join(str(p) for p in paths)} ({time.perf_counter() - t:.1f}s)", flush=True)
    print(f"[figures] {len(chosen)} figures in {time.perf_counter() - t0:.1f}s -> {out}")
    return 0
