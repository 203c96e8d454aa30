"""``python -m reference``: see :mod:`reference.cli`."""

from reference.cli import main

raise SystemExit(main())
