"""`python -m textft.cli`, as `python -m textft`."""

from .main import main

raise SystemExit(main())
