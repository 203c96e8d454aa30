"""pytest plugin loaded in the mutation runs only (``[tool.mutmut] pytest_add_cli_args``).

mutmut runs pytest several times in one process (stats, clean run, a forced-failure run)
and then forks one child per mutant from it. Whatever process-wide state a test leaves
behind when it fails half-way is inherited by every child. One such state costs a lot:
``tracemalloc`` left tracing (a test that starts it and fails before stopping it) slows
pure-Python code about 20-fold, and the forced-failure run makes tests fail half-way on
purpose. So every pytest session of a mutation run ends with tracemalloc stopped.
"""

from __future__ import annotations

import tracemalloc


def pytest_sessionfinish(session, exitstatus) -> None:
    if tracemalloc.is_tracing():
        tracemalloc.stop()
