"""Entry point for ``python -m rank_table``."""
from rank_table.cli import main

raise SystemExit(main())
