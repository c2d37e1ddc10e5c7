from rayproc.cli import _console

_console()
