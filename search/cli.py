"""The `blocksweep` command line: parse flags, call one function in `commands`, print.

Exit codes: 0 success (a one-line summary, or JSON with --json); 1 a training that broke
(the reason); 2 bad input (one line saying what and where; nothing ran).
"""

from __future__ import annotations

import argparse
import json
import sys

from search import __version__
from search.errors import TrialFailed, UsageError

ENGINES = ("optuna", "kerastuner")
SAMPLERS = ("tpe", "random", "cmaes", "gp", "grid")
PRUNERS = ("median", "hyperband", "halving", "none")
TUNERS = ("random", "bayesian", "hyperband")
BACKENDS = ("auto", "tensorflow", "jax", "torch")


class Parser(argparse.ArgumentParser):
    """argparse, with its usage errors as our one line and exit code 2."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message}")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} must be positive")
    return value


def _common(tracking=True, data=True, training=True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    if tracking:
        p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///mlruns/mlflow.db, "
                                              "or $MLFLOW_TRACKING_URI)")
    if data:
        p.add_argument("--data-dir", help="folder with cifar-10-batches-py/ (default: $BLOCKSWEEP_DATA_DIR, "
                                          "then Keras's cache or download)")
    if training:
        p.add_argument("--backend", choices=BACKENDS, default=None,
                       help="Keras backend (default: $KERAS_BACKEND, else auto: JAX on a GPU, else TensorFlow)")
        p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                       help="override a config value, e.g. --set train.epochs=3 (repeatable); "
                            "a searched parameter that is set is no longer searched")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="blocksweep", description="Hyperparameter sweeps for CIFAR-10 image classifiers, "
                                                   "tracked in MLflow.")
    parser.add_argument("--version", action="version", version=f"blocksweep {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    p = sub.add_parser("train", parents=[_common()], help="train one configuration and log it as one MLflow run")
    p.add_argument("space", help="space file (YAML); parameters take their defaults")
    p.add_argument("--experiment", help="MLflow experiment (default: <space name>-train)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("run", parents=[_common()], help="run a tuning sweep (one MLflow parent run, a child per trial)")
    p.add_argument("space", help="space file (YAML)")
    p.add_argument("--engine", choices=ENGINES, help="search engine (default: the space file's, else optuna)")
    p.add_argument("--trials", type=_positive_int, help="trials this invocation runs (a rerun adds more)")
    p.add_argument("--study-trials", type=_positive_int,
                   help="instead: run until the study has N completed or pruned trials, across all workers")
    p.add_argument("--timeout", type=_positive_float, help="seconds of wall time for this invocation")
    p.add_argument("--study", help="study name (default: the space's name); the same name resumes")
    p.add_argument("--storage", help="Optuna storage URL (default: sqlite:///mlruns/optuna.db)")
    p.add_argument("--sampler", choices=SAMPLERS)
    p.add_argument("--pruner", choices=PRUNERS)
    p.add_argument("--tuner", choices=TUNERS, help="Keras Tuner algorithm (with --engine kerastuner)")
    p.add_argument("--seed", type=int, help="sampler seed (default: the space file's, else 0)")
    p.add_argument("--max-failures", type=_positive_int, help="stop after this many failed trials")
    p.add_argument("--keep-models", choices=("best", "all"),
                   help="keep the .keras model of every trial, or of the best so far (default)")
    p.add_argument("--heartbeat", type=_positive_float, default=10.0,
                   help="seconds between a running trial's heartbeats; a trial silent for 3x this is retried")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("evaluate", parents=[_common(training=False)],
                       help="evaluate a saved model on the test set: accuracy, per class, confusion matrix")
    p.add_argument("--model", required=True, metavar="PATH|RUN_ID",
                   help="a .keras file, a folder holding model.keras (an export), or an MLflow run id")
    p.add_argument("--out", help="folder for confusion_matrix.png and evaluation.json (default: evaluation/<name>)")
    p.add_argument("--backend", choices=BACKENDS, default=None, help="Keras backend (default: as for train)")
    p.set_defaults(func=cmd_evaluate)
    return parser


# --------------------------------------------------------------------------- commands


def _print(args, summary: dict, line: str) -> None:
    print(json.dumps(summary, default=str) if args.json else line)


def cmd_train(args) -> int:
    from search import commands

    s = commands.train(args.space, overrides=args.set, data_dir=args.data_dir, backend_name=args.backend,
                       tracking_uri=args.tracking_uri, experiment=args.experiment, quiet=args.quiet)
    line = (f"run {s['run_id']} completed: {s['metric']} {s['objective']:.4f} (best epoch {s['best_epoch']}), "
            f"test_accuracy {s['test_accuracy']:.4f}, {s['train_seconds']:.1f} s training, "
            f"{s['images_per_second']:.0f} img/s [{s['backend']}]")
    _print(args, s, line)
    return 0


def cmd_run(args) -> int:
    from dataclasses import asdict

    from search import commands

    summary = commands.sweep(
        args.space, engine=args.engine, trials=args.trials, study_trials=args.study_trials, timeout=args.timeout,
        study=args.study, storage=args.storage, sampler=args.sampler, pruner=args.pruner, tuner=args.tuner,
        seed=args.seed, max_failures=args.max_failures, keep_models=args.keep_models, heartbeat=args.heartbeat,
        overrides=args.set, data_dir=args.data_dir, backend_name=args.backend, tracking_uri=args.tracking_uri,
        quiet=args.quiet)
    from search.config import load_spec

    metric = load_spec(args.space, None).file.objective.metric if not args.json else ""
    _print(args, asdict(summary), summary.line(metric))
    return 0


def cmd_evaluate(args) -> int:
    from search.evaluate import evaluate

    s = evaluate(args.model, data_dir=args.data_dir, out=args.out, tracking_uri=args.tracking_uri,
                 backend_name=args.backend)
    logged = f"; logged to run {s['run_id']}" if s["logged_to_run"] else ""
    width = max(len(name) for name in s["per_class"])
    per_class = "".join(f"\n  {name:<{width}}  {accuracy:.4f}" for name, accuracy in s["per_class"].items())
    _print(args, s, f"{args.model}: test accuracy {s['accuracy']:.4f} on {s['images']} images; "
                    f"confusion matrix {s['png']}{logged}{per_class}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return args.func(args)
    except UsageError as err:
        print(f"blocksweep: error: {err}", file=sys.stderr)
        return 2
    except TrialFailed as err:
        print(f"blocksweep: training failed: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("blocksweep: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
