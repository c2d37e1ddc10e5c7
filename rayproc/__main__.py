"""``python -m rayproc``: the CLI (nothing runs on a plain import, e.g. pytest's doctest collection)."""

from rayproc.cli import _console

if __name__ == "__main__":
    _console()
