"""The ``clap4cl`` command line: run, extract, report.

Bad input exits with status 2 and one line on stderr; never a traceback.
"""
from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path
from typing import List, Optional

from clap4cl.errors import UserError

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, what shells report for a terminated process
RESUME_HINT = ("finished experiences are kept in the run directory: run the same command "
               "again to resume")


class Terminated(KeyboardInterrupt):
    """SIGTERM (what schedulers and ``kill`` send) arrived: stop like Ctrl-C."""


def _raise_on_sigterm():
    """Turn SIGTERM into :class:`Terminated`; returns the handler it replaced (or None)."""
    import signal

    def handler(signum, frame):
        raise Terminated()

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        return None


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse's own convention)
        self.exit(EXIT_BAD_INPUT, f"clap4cl: error: {message} (see {self.prog} --help)\n")


def choices_help() -> str:
    """The allowed values of every --set key with a fixed set, from the registries."""
    from clap4cl.runner.config import CHOICES, LIST_CHOICES

    rows = {**CHOICES, **{f"{key}[].name": names for key, names in LIST_CHOICES.items()}}
    width = max(map(len, rows))
    lines = [textwrap.fill(", ".join(names), 100, initial_indent=f"  {key:<{width}}  ",
                           subsequent_indent=" " * (width + 4)) for key, names in rows.items()]
    return "allowed values of --set keys (see docs/choices.md):\n" + "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="clap4cl", description="Continual learning for CLIP models on Avalanche.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add_config_args(p):
        p.add_argument("--config", help="YAML config file (default: the offline configs/default.yaml)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set dataset.n_experiences=5 (repeatable)")
        p.add_argument("--quiet", action="store_true", help="no progress bars or per-step logs")

    run = sub.add_parser("run", help="run one class-incremental experiment", epilog=choices_help(),
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(run)
    run.add_argument("--output", help="run directory (default: runs/<dataset>-<method>-run<k>)")
    run.add_argument("--seeds", type=int, nargs="+", metavar="RUN",
                     help="run these runs (class orders 1993 + run) into DIR/run<k> and write the "
                          "aggregate table DIR/report.md (default DIR: runs/<dataset>-<method>)")

    extract = sub.add_parser("extract", help="fill the frozen-feature cache only",
                             epilog=choices_help(),
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(extract)

    report = sub.add_parser("report", help="aggregate run directories into a Markdown table")
    report.add_argument("dirs", nargs="+", help="run directories (each with results.json)")
    parser.commands = {"run": run, "extract": extract, "report": report}
    return parser


def _one_line_warnings():
    """Warnings as one ``clap4cl: warning: ...`` line each (no source line under them);
    returns the formatter it replaced."""
    import warnings

    previous = warnings.formatwarning
    warnings.formatwarning = lambda message, category, *_, **__: f"clap4cl: warning: {message}\n"
    return previous


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # named by the subcommand, whose --help lists its options
        parser.commands.get(args.command, parser).error(f"unrecognized arguments: {' '.join(extra)}")
    format_warning, previous = _one_line_warnings(), _raise_on_sigterm()
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "extract":
            return _extract(args)
        if args.command == "report":
            return _report(args)
    except UserError as exc:
        print(f"clap4cl: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Terminated:
        print(f"clap4cl: terminated (SIGTERM); {RESUME_HINT}", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print(f"clap4cl: interrupted; {RESUME_HINT}", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        import signal
        import warnings

        warnings.formatwarning = format_warning
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return EXIT_BAD_INPUT


def _load(args):
    from clap4cl.runner.config import default_config_path, load_config

    path = args.config if args.config is not None else default_config_path()
    config = load_config(path, args.overrides)
    if args.quiet:
        config["logging"]["progress"] = False
    return config


def _run(args) -> int:
    config = _load(args)  # before importing the experiment loop: a config error stays fast
    from clap4cl.runner.experiment import run_experiment
    from clap4cl.runner.rundir import default_output

    if args.seeds:
        return _run_seeds(args, config)
    output = Path(args.output) if args.output else default_output(config)
    _print_summary(run_experiment(config, output), output)
    return 0


def _run_seeds(args, config) -> int:
    """One run per seed in DIR/run<k>, then DIR/report.md through the ``report`` code."""
    import copy

    from clap4cl.runner.experiment import run_experiment
    from clap4cl.runner.report import markdown_report
    from clap4cl.runner.rundir import default_output

    root = Path(args.output) if args.output else default_output(config, seeds=True)
    if any(run < 0 for run in args.seeds):
        raise UserError(f"--seeds must be non-negative run indices, got {args.seeds}")
    dirs = []
    for run in dict.fromkeys(args.seeds):
        seeded = copy.deepcopy(config)
        seeded["run"] = run
        dirs.append(root / f"run{run}")
        results = run_experiment(seeded, dirs[-1])
        _print_summary(results, dirs[-1])
    if not results:
        return 0
    table = markdown_report(dirs)
    (root / "report.md").write_text(table + "\n")
    print(table)
    return 0


def _print_summary(results, output: Path) -> None:
    if not results:  # a rank > 0 of a torchrun run: rank 0 reports
        return
    print(f"avg incremental accuracy {results['avg_incremental_accuracy']:.4f}, "
          f"last accuracy {results['last_accuracy']:.4f}; results in {output / 'results.json'}")


def _extract(args) -> int:
    """Fill the cache; under torchrun the ranks share the image encoding, rank 0 reports."""
    config = _load(args)  # before the heavy imports: a config error stays fast
    from clap4cl import distributed
    from clap4cl.features.cache import FeatureCache
    from clap4cl.runner.inputs import (build_benchmark, cache_dir, check_cache_dir, check_device,
                                       load_backbone, stream_text_features)
    from clap4cl.runner.threads import phase_threads
    from clap4cl.runner.torchrun import run_seed

    check_device(config)
    check_cache_dir(config)
    distributed.init_from_env(run_seed(config), config["backbone"]["device"])
    main = distributed.is_main()
    cache = FeatureCache(cache_dir(config))
    with phase_threads("extract", config["threads"]):
        backbone = load_backbone(config)
        benchmark = build_benchmark(config, backbone, cache,
                                    progress=config["logging"]["progress"] and main)
        if main:  # a few prompts: not worth sharding, and one writer of the text cache
            stream_text_features(config, benchmark, backbone, cache)
    distributed.barrier()
    if main:
        print(f"features of {config['dataset']['name']} are cached in {cache.root}")
    return 0


def _report(args) -> int:
    from clap4cl.runner.report import markdown_report

    print(markdown_report([Path(d) for d in args.dirs]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
