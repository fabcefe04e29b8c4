"""``python -m sklens``: the ``sklens`` command line."""

from sklens.app.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
