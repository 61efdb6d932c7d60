"""`python -m nsnet` ends without the interpreter's teardown (what it costs is measured in
bench/bench_startup.py), but only when nothing is lost: atexit handlers run, what was printed
is written, and another thread still running means the normal exit."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# a module-level object whose finalizer runs only in the interpreter's teardown
PROLOGUE = """
import atexit, sys, threading, time
class Teardown:
    def __del__(self):
        sys.stderr.write("teardown ran\\n")
witness = Teardown()
atexit.register(lambda: sys.stderr.write("atexit ran\\n"))
"""


def run_main(body: str, argv: list[str], **kw) -> subprocess.CompletedProcess:
    code = PROLOGUE + body + (
        "import nsnet.__main__ as entry\n"
        f"sys.argv = ['nsnet', *{argv!r}]\n"
        "sys.exit(entry.main())\n")
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120, **kw)


def test_exit_code_and_output_survive_the_fast_exit(tmp_path):
    (tmp_path / "proc").mkdir()
    done = run_main("", ["sockets", "--json", "--proc", str(tmp_path / "proc")])
    assert done.returncode == 1, done.stderr      # not a procfs: one line, exit 1
    assert "nsnet: error:" in done.stderr and "Traceback" not in done.stderr
    assert "atexit ran" in done.stderr            # handlers still run
    assert "teardown ran" not in done.stderr      # the teardown is what is skipped


def test_help_is_written_in_full_before_the_exit():
    done = run_main("", ["sockets", "--help"])
    normal = subprocess.run([sys.executable, "-c", "import sys\nfrom nsnet.cli import build_parser\n"
                             "build_parser().parse_args(['sockets', '--help'])"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    # argparse's --help ends in SystemExit inside cli.main: the normal exit, same text
    assert done.stdout == normal.stdout and done.stdout.endswith("\n")


def test_another_thread_running_means_the_normal_exit(tmp_path):
    (tmp_path / "proc").mkdir()
    body = "threading.Thread(target=time.sleep, args=(0.5,)).start()\n"
    done = run_main(body, ["sockets", "--json", "--proc", str(tmp_path / "proc")])
    assert done.returncode == 1
    assert "atexit ran" in done.stderr and "teardown ran" in done.stderr


def test_a_reader_that_goes_away_is_not_an_error():
    # `nsnet sockets --help | head -c 10`: the rest cannot be written; exit 0, no complaint
    code = PROLOGUE + ("import nsnet.__main__ as entry\n"
                       "sys.stdout = open(sys.stdout.fileno(), 'w', buffering=1 << 20, closefd=False)\n"
                       "print('x' * 200_000)\n"
                       "sys.argv = ['nsnet', 'sockets', '--json', '--proc', '/nonexistent']\n"
                       "sys.exit(entry.main())\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.read(10)
    proc.stdout.close()     # before the 200 kB buffered are flushed at the exit
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 1, err
    assert "BrokenPipe" not in err and "Exception ignored" not in err, err
    assert "teardown ran" not in err
