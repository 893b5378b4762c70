"""The `blocksweep` command line: parse flags, call one function in `commands`, print.

Exit codes: 0 success (a one-line summary, or JSON with --json); 1 a training that broke
(the reason), or a sweep whose every trial failed; 2 bad input (one line saying what and
where; nothing ran); 130 after Ctrl-C and 143 after SIGTERM (the running trial recorded
interrupted and enqueued again).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading

from search.version import __version__
from search.errors import Interrupted, StoreBusy, TrialFailed, UsageError, interrupted

ENGINES = ("optuna", "kerastuner")
SAMPLERS = ("tpe", "random", "cmaes", "gp", "grid")
PRUNERS = ("median", "hyperband", "halving", "none")
TUNERS = ("random", "bayesian", "hyperband")
BACKENDS = ("auto", "tensorflow", "jax", "torch")


class Parser(argparse.ArgumentParser):
    """argparse, with its usage errors as our one line and exit code 2."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message}")


class Noted(argparse.Action):
    """argparse's `store` (with nargs=0: `store_true`) that also notes the flag as it was
    typed (an abbreviation, or --flag=value), so that `worker_argv` can take exactly those
    tokens out of the command line the launcher was given."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, True if self.nargs == 0 else values)
        namespace.noted = [*getattr(namespace, "noted", []), (option_string, self.nargs == 0)]


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


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port (1-65535)")
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
        p.add_argument("--system-metrics", action=argparse.BooleanOptionalAction, default=None,
                       help="log CPU, memory and GPU use into each run (MLflow's monitor; default: on for GPUs)")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.add_argument("--json", action=Noted, nargs=0, default=False, help="print the summary as JSON")
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
    p.add_argument("--study", help="study name (default: the space's name, or <name>-kerastuner with "
                                    "--engine kerastuner); the same name resumes")
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
    p.add_argument("--workers", type=_positive_int, action=Noted,
                   help="start N worker processes on this machine, all on this study (see --gpus)")
    p.add_argument("--gpus", action=Noted, help="GPUs for the workers, round-robin, e.g. 0,1 (default: every "
                                                "visible GPU; none: the CPU)")
    p.add_argument("--gpu-memory-fraction", type=_positive_float, action=Noted,
                   help="each worker's share of its GPU's memory (default when workers share a GPU: "
                        "0.9 / workers on it)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("compare", parents=[_common(training=False)],
                       help="rank the trials of one or more sweeps, draw why, optionally retrain the leaders")
    p.add_argument("--study", action="append", metavar="NAME", help="a study to compare (repeatable; default: all)")
    p.add_argument("--experiment", help="compare every sweep in this MLflow experiment")
    p.add_argument("--top", type=_positive_int, default=10, help="rows shown per list and runs in the curves plot")
    p.add_argument("--metric", help="rank by this metric instead of the studies' objective (e.g. test_accuracy)")
    p.add_argument("--format", choices=("table", "csv", "markdown", "json", "html"), default="table")
    p.add_argument("--out", default="compare", help="folder for the figures and the ranking file (default: compare)")
    p.add_argument("--storage", help="Optuna storage URL, for importances (default: sqlite:///mlruns/optuna.db)")
    p.add_argument("--no-figures", action="store_true", help="rank only: draw and log no figures")
    p.add_argument("--no-log", action="store_true", help="write nothing into MLflow: the figures stay in --out")
    p.add_argument("--repeat", type=int, metavar="K", help="retrain the top configurations with K seeds each")
    p.add_argument("--repeat-top", type=_positive_int, default=None, metavar="N",
                   help="how many configurations --repeat retrains (default 3)")
    p.add_argument("--backend", choices=BACKENDS, default=None, help="Keras backend for --repeat")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("export", parents=[_common(data=False, training=False)],
                       help="export the best trial's model (best epoch) with what it needs to run")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--study", help="export the best completed trial of this study (default: the store's "
                                       "only study)")
    which.add_argument("--run", metavar="RUN_ID", help="export this run's model")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write (created; must be empty)")
    p.add_argument("--format", choices=("keras", "savedmodel", "onnx"), default="keras",
                   help="also write a TF SavedModel or an ONNX file (model.keras is always written)")
    p.add_argument("--register", metavar="MODEL_NAME",
                   help="register the run's MLflow model as a new version of MODEL_NAME and set --alias on it")
    p.add_argument("--alias", default="champion",
                   help="the registered version's alias (default: champion; serve it as models:/MODEL_NAME@ALIAS)")
    p.add_argument("--backend", choices=BACKENDS, default=None, help="Keras backend (savedmodel needs tensorflow)")
    p.add_argument("--storage", help="Optuna storage that must hold --study (a cross-check; the best trial is "
                                     "read from MLflow)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("predict", parents=[_common(data=False, training=False)],
                       help="classify PNG/JPEG images with an exported model")
    p.add_argument("--model", required=True, metavar="DIR", help="a folder written by `blocksweep export`")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="PNG, JPEG, BMP or GIF files, RGB (resized to the model's size)")
    p.add_argument("--backend", choices=BACKENDS, default=None)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("ui", help="serve the MLflow UI (and optuna-dashboard) on the project's stores")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1, this "
                                                       "machine only; the UI has no login)")
    p.add_argument("--port", type=_port, default=5000, help="MLflow UI port (default: 5000)")
    p.add_argument("--backend-store-uri", "--tracking-uri", dest="backend_store_uri",
                   help="MLflow database (default: sqlite:///mlruns/mlflow.db, or $MLFLOW_TRACKING_URI)")
    p.add_argument("--artifacts-destination", help="where the server stores artifacts logged through it "
                                                   "(default: mlruns/artifacts)")
    p.add_argument("--workers", type=_positive_int, default=1,
                   help="server worker processes (default: 1; each takes ~0.25 GB)")
    p.add_argument("--dashboard", action="store_true", help="also serve optuna-dashboard on the study storage")
    p.add_argument("--dashboard-port", type=_port, default=8080, help="optuna-dashboard port (default: 8080)")
    p.add_argument("--storage", help="Optuna storage for --dashboard (default: sqlite:///mlruns/optuna.db)")
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser("evaluate", parents=[_common(training=False)],
                       help="evaluate a saved model on the test set: accuracy, per class, confusion matrix")
    p.add_argument("--model", required=True, metavar="PATH|RUN_ID",
                   help="a .keras file, a folder holding model.keras (an export), or an MLflow run id")
    p.add_argument("--out", help="folder for confusion_matrix.png and evaluation.json (default: evaluation/<name>)")
    p.add_argument("--backend", choices=BACKENDS, default=None, help="Keras backend (default: as for train)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("schema", help="print the JSON Schema of space files (for editors that check YAML)")
    p.add_argument("--out", metavar="FILE", help="write it to FILE instead")
    p.set_defaults(func=cmd_schema)
    return parser


# --------------------------------------------------------------------------- commands


def _print(args, summary: dict, line: str) -> None:
    print(json.dumps(summary, default=str) if args.json else line)


def cmd_train(args) -> int:
    from search import commands

    s = commands.train(args.space, overrides=args.set, data_dir=args.data_dir, backend_name=args.backend,
                       tracking_uri=args.tracking_uri, experiment=args.experiment,
                       system_metrics=args.system_metrics, quiet=args.quiet)
    if s["objective"] is None:  # data.val_size 0 (the airbench recipe only): the test set alone
        score = f"no validation split, test_tta_accuracy {s['test_tta_accuracy']:.4f}, "
    else:
        score = f"{s['metric']} {s['objective']:.4f} (best epoch {s['best_epoch']}), "
    line = (f"run {s['run_id']} completed: {score}test_accuracy {s['test_accuracy']:.4f}, "
            f"{s['train_seconds']:.1f} s training, {s['images_per_second']:.0f} img/s [{s['backend']}]")
    _print(args, s, line)
    return 0


LAUNCHER_FLAGS = ("workers", "gpus", "gpu_memory_fraction")


def worker_argv(argv: list[str], args) -> list[str]:
    """The `run` command line one worker runs: the one the launcher was given, minus the
    launcher's own flags (--workers, --gpus, --gpu-memory-fraction) and --json (the
    launcher adds it), each as it was typed (`Noted`)."""
    noted = dict(getattr(args, "noted", []))  # flag as typed -> takes no value
    out, tokens = [], iter(argv)
    for token in tokens:
        flag, equals, _ = token.partition("=")
        if token.startswith("--") and flag in noted:
            if not equals and not noted[flag]:
                next(tokens, None)  # its value, the next token
            continue
        out.append(token)
    return out


def cmd_run(args) -> int:
    from dataclasses import asdict

    from search import commands

    if any(getattr(args, flag) is not None for flag in LAUNCHER_FLAGS):
        from search.services import workers

        code, summary, line = workers.run(args.space, worker_argv(args.argv, args), workers=args.workers or 1,
                                          gpus=args.gpus, memory_fraction=args.gpu_memory_fraction,
                                          overrides=args.set, engine=args.engine)
        _print(args, summary, line)
        return code

    try:
        summary = commands.sweep(
            args.space, engine=args.engine, trials=args.trials, study_trials=args.study_trials,
            timeout=args.timeout, study=args.study, storage=args.storage, sampler=args.sampler, pruner=args.pruner,
            tuner=args.tuner, seed=args.seed, max_failures=args.max_failures, keep_models=args.keep_models,
            heartbeat=args.heartbeat, overrides=args.set, data_dir=args.data_dir, backend_name=args.backend,
            tracking_uri=args.tracking_uri, system_metrics=args.system_metrics, quiet=args.quiet)
    except Interrupted as err:
        if err.summary is not None and args.json:  # the counts so far, for the --workers launcher
            print(json.dumps(asdict(err.summary), default=str))
        raise
    _print(args, asdict(summary), summary.line())
    if summary.all_failed:
        print(f"blocksweep: all {summary.ran['failed']} trials of this run failed; the first: "
              f"{summary.first_failure}", file=sys.stderr)
        return 1
    return 0


def cmd_compare(args) -> int:
    from search.analysis.compare import compare

    report = compare(args.study, experiment=args.experiment, top=args.top, metric=args.metric,
                     fmt="json" if args.json else args.format, out=args.out, tracking_uri=args.tracking_uri,
                     storage=args.storage, repeat=args.repeat, repeat_top=args.repeat_top, data_dir=args.data_dir,
                     backend_name=args.backend, figures=not args.no_figures, log=not args.no_log,
                     quiet=args.quiet)
    print(report.text, end="")
    return 0


def cmd_export(args) -> int:
    from search.artifacts.export import export

    s = export(study=args.study, run_id=args.run, out=args.out, fmt=args.format, register=args.register,
               alias=args.alias, tracking_uri=args.tracking_uri, backend_name=args.backend, storage=args.storage)
    value = f"{s['objective']:.4f}" if s["objective"] is not None else "n/a"
    line = (f"exported {s['source']} (run {s['run_id']}, {s['metric']} {value} at epoch {s['best_epoch']}) "
            f"to {s['out']}: {', '.join(s['files'])}")
    if s.get("registered"):
        r = s["registered"]
        line += f"; registered {r['name']} version {r['version']} as '{r['alias']}' ({r['model_uri']})"
    _print(args, s, line)
    return 0


def cmd_predict(args) -> int:
    from search.artifacts.predict import predict

    rows = predict(args.model, args.images, backend_name=args.backend)
    lines = [f"{args.model}: {rows[0]['answers']}"]  # which recorded metric the answers reproduce
    lines += [f"{r['image']}: {r['label']} ({r['probability']:.3f})" for r in rows]
    _print(args, rows, "\n".join(lines))
    return 0


def cmd_ui(args) -> int:
    from search.services import ui

    try:
        return ui.ui(host=args.host, port=args.port, backend_store_uri=args.backend_store_uri,
                           artifacts_destination=args.artifacts_destination, workers=args.workers,
                           dashboard=args.dashboard, dashboard_port=args.dashboard_port, storage=args.storage)
    except ui.ServiceFailed as err:
        print(f"blocksweep ui: {err}", file=sys.stderr)
        return 1


def cmd_evaluate(args) -> int:
    from search.artifacts.evaluate import evaluate

    s = evaluate(args.model, data_dir=args.data_dir, out=args.out, tracking_uri=args.tracking_uri,
                 backend_name=args.backend)
    logged = f"; logged to run {s['run_id']}" if s["logged_to_run"] else ""
    recorded = f", recorded {s['recorded']:.4f}" if s["recorded"] is not None else ""
    width = max(len(name) for name in s["per_class"])
    per_class = "".join(f"\n  {name:<{width}}  {accuracy:.4f}" for name, accuracy in s["per_class"].items())
    _print(args, s, f"{args.model}: {s['metric']} {s['accuracy']:.4f} on {s['images']} images ({s['how']}{recorded}); "
                    f"confusion matrix {s['png']}{logged}{per_class}")
    return 0


def cmd_schema(args) -> int:
    from pathlib import Path

    from search.config.spec import space_schema

    text = json.dumps(space_schema(), indent=2) + "\n"
    if args.out is None:
        print(text, end="")
        return 0
    try:
        Path(args.out).write_text(text)
    except OSError as err:
        raise UsageError(f"--out {args.out}: cannot write it ({err.strerror})") from None
    print(f"wrote the space-file schema to {args.out}")
    return 0


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (`docker stop`, Kubernetes, systemd, the --workers launcher) stops a command
    as Ctrl-C does, instead of ending the process where it stands: the running trial is
    recorded interrupted and enqueued again, the runs are closed. Only the first one: more
    SIGTERMs must not cut that clean-up short (`docker stop` kills after its grace anyway)."""
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return

    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    with _sigterm_as_interrupt():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parser.parse_args(argv)
        args.argv = argv  # as given: the launcher forwards it to its workers (`worker_argv`)
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
    except StoreBusy as err:
        print(f"blocksweep: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        stop = interrupted(err)
        if stop.summary is not None:
            print(f"blocksweep: {stop.summary.line()}", file=sys.stderr)
        else:
            print(f"blocksweep: stopped by {stop.name}", file=sys.stderr)
        return stop.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
