"""``python -m chassis``: the same as the ``chassis`` command."""

from chassis.cli import main

raise SystemExit(main())
