"""`python -m nsnet` and the `nsnet` console script. `nsnet --version` is answered here,
before anything else is imported: nsnet.cli brings the options and the model, whose
dataclasses alone take ~40 ms to build -- twice the bare interpreter's start."""
import os
import sys

from . import __version__


def main() -> int:
    if sys.argv[1:] == ["--version"]:
        sys.stdout.write(f"nsnet {__version__}\n")
        return 0
    from .cli import main as cli_main

    return exit_without_teardown(cli_main())


def exit_without_teardown(code: int) -> int:
    """End the process as the interpreter would -- other threads done, the atexit handlers
    run, what it printed written -- but without the teardown after that, which only frees
    memory (every module, what a command left behind: ~30-40 ms of a `sockets --json` run
    here) that the kernel takes back at once when the process ends. Returns, for the normal
    exit, when another thread still runs or this is not CPython."""
    threading = sys.modules.get("threading")
    if threading is not None and threading.active_count() > 1:
        return code
    import atexit

    run_handlers = getattr(atexit, "_run_exitfuncs", None)   # CPython's
    if run_handlers is None:
        return code
    run_handlers()    # e.g. logging's (the nsenter package imports logging)
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        # the reader went away (| head): what is left unwritten is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        return code   # stdout closed or failing: the normal exit says so
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        return code
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
