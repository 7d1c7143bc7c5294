"""`python -m textft`: the textft command line."""

from .cli import main

raise SystemExit(main())
