"""``python -m sslsearch ...``: the command line, the same as the ``sslsearch`` entry point."""
from __future__ import annotations

from .cli.app import main

if __name__ == "__main__":
    main()
