"""Figure scripts. Each ``figures/fig_*.py`` regenerates one figure and its CSV.

A figure module provides::

    TITLE: str                       # one line, shown by `figures --list`
    def make(out_dir: pathlib.Path, *, quick: bool = False) -> list[pathlib.Path]

``make`` writes a PNG and the CSV behind it (same stem) into ``out_dir`` and
returns the paths it wrote. A figure that verifies a bound must *check* the
bound on the data it plots and raise ``AssertionError`` (a bug report, not a
figure) if any point violates it.

Run them all with ``python -m reference figures``.
"""
