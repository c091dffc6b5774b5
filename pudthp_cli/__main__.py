"""``python -m pudthp_cli``: the ``pudthp`` command line."""

from pudthp_cli.main import main

raise SystemExit(main())
