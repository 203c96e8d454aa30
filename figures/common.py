"""Helpers shared by the figure scripts: headless matplotlib and CSV output."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on CI or servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["plt", "write_csv", "save"]


def write_csv(path: Path, columns: Mapping[str, Sequence]) -> Path:
    """Write equal-length ``columns`` (name -> values) to ``path`` as CSV."""
    names = list(columns)
    cols = [np.asarray(columns[n]) for n in names]
    lengths = {len(c) for c in cols}
    if len(lengths) > 1:
        raise ValueError(f"columns: expected equal lengths, got {dict(zip(names, map(len, cols)))}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(names)
        for row in zip(*cols):
            w.writerow([repr(float(v)) if isinstance(v, (float, np.floating)) else v for v in row])
    return path


def save(fig: "plt.Figure", path: Path) -> Path:
    """Save ``fig`` to ``path`` (PNG, 120 dpi) and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
