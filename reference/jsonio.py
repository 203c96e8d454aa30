"""Writing a run's results as JSON: the one writer of every ``--out`` / ``--json`` file.

``python -m reference demo --out``, ``python -m reference compare`` (its
result and its per-run files) and ``python -m reference bench --json`` all
write with :func:`write_json`: strict JSON (a NaN or an infinity is an error,
never the non-standard ``NaN`` token), indented by one space, keys in the
order given, written atomically (:func:`reference.persist.atomic_write`: a
reader sees the old file or the new one, never a mix).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from reference import persist

__all__ = ["write_json"]


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` to ``path`` as strict JSON, atomically; the directory is created if missing.

    Parameters
    ----------
    path : path-like
        The destination; an existing file is replaced only once the new
        content is complete on disk.
    obj : JSON-serialisable object
        Dicts, lists, strings, ints, finite floats, bools and None.

    Raises
    ------
    ValueError
        If ``obj`` holds a NaN or an infinity (``allow_nan=False``); nothing
        is written then.
    TypeError
        If ``obj`` holds something JSON cannot represent (e.g. a NumPy array).
    """
    text = json.dumps(obj, indent=1, allow_nan=False).encode("utf-8")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    persist.atomic_write(path, lambda f: f.write(text))
