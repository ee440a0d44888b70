"""``hvadam-bench``: the command line of the benchmark suite.

Bad input (unknown names, an empty grid, an unwritable ``--out``) ends in one line on stderr
and exit status 2; an interrupted run leaves no half-written result file, and the training
suites continue from their checkpoints when run again.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
import time

from hvadam_bench.reporting.markdown import sections
from hvadam_bench.runner import BenchError, atomic_write_text, prepare_output, release_locks

# Every study is a module of hvadam_bench.studies with HELP, add_arguments(parser), main(args).
STUDIES = ("valley", "speed", "lm", "ablation", "classify", "gan", "variants")
# What `hvadam-bench all` runs: every suite's CPU default (speed is machine-specific: not here).
ALL = ("valley", "lm", "ablation", "classify", "gan")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + error
        raise BenchError(message)


def _study(name: str):
    return importlib.import_module(f"hvadam_bench.studies.{name}")


def _available() -> list[str]:
    found = []
    for name in STUDIES:
        try:
            _study(name)
        except ModuleNotFoundError as error:
            if error.name != f"hvadam_bench.studies.{name}":
                raise
        else:
            found.append(name)
    return found


def _run_all(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    out = prepare_output(args.out)
    parts = []
    began = time.perf_counter()
    for name in ALL:
        if name not in _available():
            continue
        study_args = parser.parse_args(
            [name, "--out", str(out / name), *(["--no-progress"] if args.no_progress else [])]
        )
        print(f"== {name}", file=sys.stderr)
        started = time.perf_counter()
        status = _study(name).main(study_args)
        if status:
            return status
        parts.append((name, time.perf_counter() - started))
    total = time.perf_counter() - began
    lines = [
        "# hvadam-bench all",
        "",
        "Every suite's CPU default, run by `hvadam-bench all`; generated, do not edit by hand. "
        f"Wall time: {total / 60:.1f} minutes in all "
        f"({', '.join(f'{name} {seconds / 60:.1f}' for name, seconds in parts)}); suites "
        "resumed from stored trials count only the time they took now.",
        "",
    ]
    for name, _ in parts:
        module = _study(name)
        report = (out / name / "report.md").read_text(encoding="utf-8")
        title = report.splitlines()[0].lstrip("# ")
        lines += [f"# {title}", "", f"Full report: [{name}/report.md]({name}/report.md).", ""]
        lines.append(sections(report, module.SUMMARY_SECTIONS, folder=name))
    atomic_write_text(out / "report.md", "\n".join(lines))
    print(f"wrote {out / 'report.md'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hvadam-bench", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in _available():
        module = _study(name)
        module.add_arguments(commands.add_parser(name, help=module.HELP, description=module.HELP))
    every = commands.add_parser("all", help="every suite's CPU default and one combined report")
    every.add_argument("--out", default="results", help="output directory (one folder per suite)")
    every.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


class _Terminated(Exception):
    """SIGTERM, turned into an exception so that workers are ended and files closed."""


def _raise_terminated(signum, frame) -> None:
    raise _Terminated


def main(argv: list[str] | None = None) -> int:
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        return _main(argv)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
        release_locks()


def _main(argv: list[str] | None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        if args.command == "all":
            return _run_all(args, parser)
        return _study(args.command).main(args)
    except BenchError as error:
        print(f"hvadam-bench: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "hvadam-bench: interrupted; finished results are intact, and training suites "
            "resume from their checkpoints when run again",
            file=sys.stderr,
        )
        return 130
    except _Terminated:
        print(
            "hvadam-bench: terminated; finished results are intact, and training suites "
            "resume from their checkpoints when run again",
            file=sys.stderr,
        )
        return 143


if __name__ == "__main__":
    sys.exit(main())
