"""`python -m nsnet` and the `nsnet` console script. `nsnet --version` is answered here,
before anything else is imported: nsnet.cli brings the options and the model, whose
dataclasses alone take ~40 ms to build -- twice the bare interpreter's start."""
import sys

from . import __version__


def main() -> int:
    if sys.argv[1:] == ["--version"]:
        sys.stdout.write(f"nsnet {__version__}\n")
        return 0
    from .cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
