"""`hvdistill <verb>`: the one command-line entry point.

The only place that dispatches verbs to sharding/ and launch/, importing each verb's module
lazily so `hvdistill --help` is instant and a verb's heavy dependencies load only when used.
Every verb module exposes `main(argv: list[str] | None = None) -> int`.

The error boundary (`run_verb`): a failure a user caused and can fix ends the command with one
message on stderr, `hvdistill <verb>: <what, naming the file or key, and the way out>`, and exit
status 2, never a traceback. Known failures are
- OSError of any kind (a missing or unreadable file, a file where a directory belongs, a
  directory where a file belongs, no permission, a full disk, a refused connection): the message
  names the path and says what to do;
- the ValueError / RuntimeError / LookupError family when the project raised it on purpose: its
  class is defined in hvdistill/, launch/ or sharding/ (ConfigError, OutputLocked, SchemaError,
  DatasetLayoutError, ShardError, ...) or it was raised by a line of that code (the messages
  written for users).
Anything else (a TypeError, a KeyError, an error raised inside a library) is a bug and surfaces
with its traceback; HVDISTILL_TRACEBACK=1 shows the traceback of known failures too. Ctrl-C ends
with one line and status 130.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

# verb -> (module with main(argv), one-line help)
VERBS: dict[str, tuple[str, str]] = {
    "config": ("hvdistill.config.cli", "show the resolved config: config show CONFIG [key=value ...]"),
    "synth": ("hvdistill.synthetic.cli", "generate the synthetic world in nuScenes / SemanticKITTI format"),
    "inspect": ("hvdistill.data.sources.cli", "read a dataset through its source and print what it holds"),
    "shard": ("sharding.cli", "shard every data.sources entry with Ray; `shard verify DIR`"),
    "teacher": (
        "hvdistill.teacher.cli",
        "train the synthetic world's image teacher: teacher train CONFIG [k=v ...]",
    ),
    "demo": ("launch.demo", "the whole chain on the synthetic world: synth, shard, pretrain, sweep, report"),
    "pretrain": ("hvdistill.train.run", "pretrain the 3D backbone (DeepSpeed); --ray: on Ray Train workers"),
    "finetune": ("hvdistill.eval.run", "fine-tune or linearly probe the 3D backbone; mIoU per point"),
    "sweep": ("launch.sweep", "Ray Tune sweep: checkpoints x label fractions x seeds, table and plot"),
    "report": ("hvdistill.eval.report", "a sweep's mIoU table, plot and per-class IoU, from MLflow"),
    "study": ("launch.study", "the label-efficiency study: world, teacher, 3 pretrainings, sweeps, table"),
    "submit": ("launch.submit", "submit pretraining or a sweep to Ray as a job; submit status|logs|stop ID"),
}
# verb -> (flag, module): with the flag among its arguments the verb runs that module instead
FLAG_ROUTES: dict[str, tuple[str, str]] = {
    "pretrain": ("--ray", "launch.train"),  # `pretrain CONFIG ... --ray`: on Ray Train workers
}


def usage() -> str:
    width = max(len(v) for v in VERBS)
    lines = ["usage: hvdistill <verb> [args]", "", "verbs:"]
    lines += [f"  {verb:<{width}}  {text}" for verb, (_, text) in VERBS.items()]
    lines += ["", "`hvdistill <verb> --help` describes a verb's arguments."]
    return "\n".join(lines)


EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
PROJECT_PACKAGES = ("hvdistill", "launch", "sharding")
TRACEBACK_ENV = "HVDISTILL_TRACEBACK"
# what to do about an OSError the project did not word itself, by kind
OS_ADVICE: tuple[tuple[type[OSError], str], ...] = (
    (FileNotFoundError, "check the path given on the command line or in the config"),
    (FileExistsError, "it exists already; choose another path or remove it"),
    (NotADirectoryError, "a file stands where a directory is needed; choose another path"),
    (IsADirectoryError, "a directory stands where a file is needed; give the file's path"),
    (PermissionError, "this user may not access it; choose a location you can read and write"),
)


def _ours(module: str) -> bool:
    return module.split(".", 1)[0] in PROJECT_PACKAGES


def is_user_error(exc: BaseException) -> bool:
    """Whether `exc` is a failure the user caused and can fix (the module docstring's rule)."""
    if isinstance(exc, OSError):
        return True
    if not isinstance(exc, ValueError | RuntimeError | LookupError):
        return False
    if isinstance(exc, KeyError | IndexError | NotImplementedError | RecursionError):
        return False
    if _ours(type(exc).__module__):
        return True
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:  # the frame that raised it
        tb = tb.tb_next
    return _ours(str(tb.tb_frame.f_globals.get("__name__", "")))


def describe(exc: BaseException) -> str:
    """The one message of a known failure: an OSError's path, reason and advice, else its text."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        advice = next((text for kind, text in OS_ADVICE if isinstance(exc, kind)), "")
        where = f"{exc.filename} -> {exc.filename2}" if exc.filename2 else str(exc.filename)
        return f"{where}: {exc.strerror}" + (f"; {advice}" if advice else "")
    return str(exc) or type(exc).__name__


def run_verb(verb: str, module_name: str, argv: list[str]) -> int:
    """Import the verb's module and run its `main(argv)` inside the error boundary."""
    try:
        module: Any = importlib.import_module(module_name)
        return int(module.main(argv) or 0)
    except KeyboardInterrupt:
        print(f"hvdistill {verb}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        return user_error_exit(verb, exc)


def user_error_exit(verb: str, exc: Exception) -> int:
    """Inside an `except`: re-raise `exc` unless it is a user error (or tracebacks are asked for);
    else print its one line and return the exit status. Verbs whose `main` catches its own
    failures call this too, so they keep the boundary's rule."""
    if not is_user_error(exc) or os.environ.get(TRACEBACK_ENV) == "1":
        raise exc
    print(f"hvdistill {verb}: {describe(exc)}", file=sys.stderr)
    return EXIT_USER_ERROR


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    verb, rest = argv[0], argv[1:]
    flag, routed = FLAG_ROUTES.get(verb, ("", ""))
    if flag and flag in rest:
        return run_verb(verb, routed, rest)
    if verb not in VERBS:
        import difflib

        close = difflib.get_close_matches(verb, list(VERBS), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        print(f"hvdistill: unknown verb '{verb}'.{hint}\n\n{usage()}", file=sys.stderr)
        return EXIT_USER_ERROR
    return run_verb(verb, VERBS[verb][0], rest)


if __name__ == "__main__":
    sys.exit(main())
