"""``python -m harness``: the ``pudthp`` command line."""

from harness.cli import main

raise SystemExit(main())
