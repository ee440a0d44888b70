"""``hvadam-bench``: the command line of the benchmark suite.

Bad input (unknown names, an empty grid, an unwritable ``--out``) ends in one line on stderr
and exit status 2; an interrupted run leaves no half-written result file.
"""

from __future__ import annotations

import argparse
import sys

from hvadam_bench.runner import BenchError, Grid, prepare_output


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + error
        raise BenchError(message)


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _numbers(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in _names(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def _common_arguments(parser: argparse.ArgumentParser, study: str, quick_help: str) -> None:
    preset = parser.add_mutually_exclusive_group()
    preset.add_argument(
        "--quick",
        dest="preset",
        action="store_const",
        const="quick",
        help=f"{quick_help} (default)",
    )
    preset.add_argument(
        "--full", dest="preset", action="store_const", const="full", help="the complete study"
    )
    parser.set_defaults(preset="quick")
    parser.add_argument("--out", default=f"results/{study}", help="output directory")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _valley_arguments(parser: argparse.ArgumentParser) -> None:
    _common_arguments(parser, "valley", "small grid and function set, under 2 minutes on 2 cores")
    parser.add_argument("--functions", type=_names, help="comma-separated function names")
    parser.add_argument("--optimizers", type=_names, help="comma-separated optimizer names")
    parser.add_argument("--lrs", type=_numbers, help="learning-rate grid, comma-separated")
    parser.add_argument("--beta2s", type=_numbers, help="β2 grid of the adaptive methods")
    parser.add_argument("--momenta", type=_numbers, help="momentum grid of SGD (as many as β2)")
    parser.add_argument("--steps", type=int, help="steps per run")
    parser.add_argument("--tune-starts", type=int, help="starting points used for tuning")
    parser.add_argument("--eval-starts", type=int, help="held-out starting points")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--list", action="store_true", help="list functions and optimizers")


def _speed_arguments(parser: argparse.ArgumentParser) -> None:
    _common_arguments(parser, "speed", "1M and 10M parameters")
    parser.add_argument("--sizes", type=_numbers, help="parameter counts, comma-separated")
    parser.add_argument("--optimizers", type=_names, help="comma-separated optimizer names")
    parser.add_argument("--tensors", type=int, help="tensors per model (default 100)")
    parser.add_argument("--rounds", type=int, help="interleaved timing rounds")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")


def _speed(args: argparse.Namespace) -> int:
    from hvadam_bench.studies import speed

    config = speed.SpeedConfig.preset_named(args.preset)
    if args.sizes is not None:
        config.sizes = [int(size) for size in args.sizes]
    for name in ("optimizers", "tensors", "rounds", "device"):
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    config.validate()
    out = prepare_output(args.out)
    results = speed.run(config, out, show_progress=not args.no_progress)
    print(f"wrote {out / 'speed.json'}, {out / 'report.md'} and {out / 'speed.png'}")
    for size, entries in results["sizes"].items():
        cells = ", ".join(f"{name} {e['median_ms']:.1f}" for name, e in entries.items())
        print(f"  {int(size):>11,d} params (ms/step): {cells}")
    return 0


def _valley(args: argparse.Namespace) -> int:
    from hvadam_bench.landscapes import all_names
    from hvadam_bench.optimizers import SPECS
    from hvadam_bench.studies import valley

    if args.list:
        print("functions: " + ", ".join(all_names()))
        print("optimizers: " + ", ".join(f"{n} ({s.source})" for n, s in SPECS.items()))
        return 0
    config = valley.ValleyConfig.preset_named(args.preset)
    for name in ("functions", "optimizers", "steps", "tune_starts", "eval_starts", "seed"):
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    if args.lrs is not None or args.beta2s is not None or args.momenta is not None:
        beta2s = args.beta2s if args.beta2s is not None else config.grid.beta2s
        momenta = args.momenta if args.momenta is not None else config.grid.momenta[: len(beta2s)]
        config.grid = Grid(
            lrs=args.lrs if args.lrs is not None else config.grid.lrs,
            beta2s=beta2s,
            momenta=momenta,
        )
    config.validate()
    out = prepare_output(args.out)
    results = valley.run(config, out, show_progress=not args.no_progress)
    winners = {name: entry["winner"] for name, entry in results["functions"].items()}
    print(f"wrote {out / 'valley.json'}, {out / 'report.md'} and figures")
    for name, winner in winners.items():
        print(f"  {name:<18} fastest: {winner}")
    return 0


COMMANDS = {
    "valley": (_valley_arguments, _valley, "the valley-dilemma study (paper Figures 1-3, Table 1)"),
    "speed": (_speed_arguments, _speed, "ms per step and memory against Adam, AdamW, AdaBelief"),
}


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="hvadam-bench", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (add_arguments, _, help_text) in COMMANDS.items():
        add_arguments(commands.add_parser(name, help=help_text, description=help_text))
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        return COMMANDS[args.command][1](args)
    except BenchError as error:
        print(f"hvadam-bench: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hvadam-bench: interrupted; finished result files are intact", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
