# The internlm2-agent interpreter driver: a persistent Python process that runs code cells for
# the host, like a notebook kernel without Jupyter.
#
# Protocol (one JSON object per line): the host writes commands to one pipe, the driver answers
# on another (their fd numbers are argv[3] and argv[4]). Cell output (stdout and stderr, also of
# subprocesses) goes to fd 1/2, which the host reads; after each cell the driver writes an end
# marker (NUL, "END:<secret>:<id>", NUL) to fd 1 so the host knows where the cell's output ends.
#   hello   -> {"hello": 1, "python": "3.11.7", "matplotlib": "3.8.0" | null, "pid": ...}
#   {"op": "exec", "id": N, "code": "..."}
#           -> {"id": N, "value": repr | null, "error": traceback | null,
#               "interrupted": bool, "figures": [paths], "notes": [text]}
# The host enforces the wall-clock timeout: SIGINT interrupts the running cell (the handler
# raises KeyboardInterrupt only while a cell runs), SIGKILL ends the whole process group.
import ast
import builtins
import io
import json
import linecache
import os
import signal
import sys
import traceback
import types
import warnings

SECRET = sys.argv[1].encode()
WORK_DIR = sys.argv[2]
COMMAND_FD = int(sys.argv[3])
RESPONSE_FD = int(sys.argv[4])
MAIN_PID = os.getpid()
VALUE_LIMIT = 8192
ERROR_HEAD = 3000
ERROR_TAIL = 5000
DRIVER_FILE = sys._getframe().f_code.co_filename

_commands = os.fdopen(COMMAND_FD, "rb", buffering=0)
_running = False


def _send(obj):
    data = (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8", "replace")
    view = memoryview(data)
    while view:
        written = os.write(RESPONSE_FD, view)
        view = view[written:]


def _on_sigint(signum, frame):
    if _running:
        raise KeyboardInterrupt


signal.signal(signal.SIGINT, _on_sigint)


def _refuse_input(prompt=""):
    raise RuntimeError(
        "input() is not supported: the code runs without a user to type an answer; "
        "put the value in the code instead"
    )


class _NoStdin(io.TextIOBase):
    """sys.stdin: reading raises the same clear error as input()."""

    def readable(self):
        return True

    def read(self, size=-1):
        _refuse_input()

    def readline(self, size=-1):
        _refuse_input()


builtins.input = _refuse_input
sys.stdin = _NoStdin()
os.chdir(WORK_DIR)
sys.path.insert(0, WORK_DIR)
warnings.filterwarnings("ignore", message=".*non-interactive, and thus cannot be shown")

_main = types.ModuleType("__main__")
_main.__dict__["__builtins__"] = builtins
sys.modules["__main__"] = _main
_namespace = _main.__dict__


def _matplotlib_version():
    try:
        import importlib.metadata

        return importlib.metadata.version("matplotlib")
    except Exception:
        return None


def _cut_error(text):
    if len(text) <= ERROR_HEAD + ERROR_TAIL:
        return text
    skipped = len(text) - ERROR_HEAD - ERROR_TAIL
    return text[:ERROR_HEAD] + f"\n[... {skipped} characters of traceback omitted ...]\n" + text[-ERROR_TAIL:]


def _format_exception(exc):
    report = traceback.TracebackException(type(exc), exc, exc.__traceback__)
    chain = report
    while chain is not None:
        # The driver's own frames (cell dispatch, the input() refusal) are not the user's.
        chain.stack = traceback.StackSummary.from_list(
            [frame for frame in chain.stack if frame.filename != DRIVER_FILE]
        )
        chain = chain.__cause__ or chain.__context__
    return _cut_error("".join(report.format()))


def _shell_refusal(code):
    for line in code.splitlines():
        stripped = line.lstrip()
        if stripped.startswith("!"):
            return (
                "Shell commands (`!...`) are not supported: this is a plain Python interpreter. "
                "Use Python instead (os, pathlib, subprocess.run)."
            )
        if stripped.startswith("%"):
            return (
                "IPython magics (`%...`) are not supported: this is a plain Python interpreter. "
                "Use Python instead."
            )
    return None


def _save_figures(cell):
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is None:
        return [], []
    paths, notes = [], []
    try:
        for index, number in enumerate(pyplot.get_fignums(), start=1):
            path = os.path.join(WORK_DIR, f"figure-{cell}-{index}.png")
            pyplot.figure(number).savefig(path)
            paths.append(path)
    except Exception as exc:
        notes.append(f"saving a figure failed: {type(exc).__name__}: {exc}")
    finally:
        try:
            pyplot.close("all")
        except Exception:
            pass
    return paths, notes


def _run_cell(cell, code):
    global _running
    filename = f"<cell {cell}>"
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    value = error = None
    interrupted = False
    try:
        tree = ast.parse(code, filename, "exec")
    except SyntaxError as exc:
        refusal = _shell_refusal(code)
        if refusal is not None:
            return None, refusal, False
        return None, _cut_error("".join(traceback.format_exception_only(type(exc), exc))), False
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    try:
        _running = True
        exec(compile(tree, filename, "exec"), _namespace)
        if last is not None:
            result = eval(compile(last, filename, "eval"), _namespace)
            if result is not None:
                _namespace["_"] = result
                text = repr(result)
                if len(text) > VALUE_LIMIT:
                    text = text[:VALUE_LIMIT] + f"... [{len(text) - VALUE_LIMIT} more characters]"
                value = text
    except KeyboardInterrupt as exc:
        interrupted = True
        error = _format_exception(exc)
    except BaseException as exc:  # SystemExit too: the cell ends, the interpreter lives on
        error = _format_exception(exc)
    finally:
        _running = False
        if os.getpid() != MAIN_PID:
            # A process the cell forked came back here: it must never speak the protocol.
            os._exit(0)
    return value, error, interrupted


def _end_marker(cell):
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except Exception:
            pass
    try:
        os.write(1, b"\x00END:" + SECRET + b":" + str(cell).encode() + b"\x00")
        return None
    except OSError as exc:
        return f"the cell's output stream is closed ({exc}); later output is lost"


def _main_loop():
    _send(
        {
            "hello": 1,
            "python": sys.version.split()[0],
            "matplotlib": _matplotlib_version(),
            "pid": MAIN_PID,
        }
    )
    for line in _commands:
        try:
            command = json.loads(line)
        except ValueError:
            continue
        if command.get("op") != "exec":
            continue
        cell = int(command["id"])
        value, error, interrupted = _run_cell(cell, str(command.get("code", "")))
        figures, notes = _save_figures(cell)
        marker_problem = _end_marker(cell)
        if marker_problem:
            notes.append(marker_problem)
        _send(
            {
                "id": cell,
                "value": value,
                "error": error,
                "interrupted": interrupted,
                "figures": figures,
                "notes": notes,
            }
        )


_main_loop()
