"""`python -m supplier` is the `supplier` command."""

from .cli import main

raise SystemExit(main())
