"""The `sslsearch` command line: a thin Typer layer over the library (see app.py)."""
