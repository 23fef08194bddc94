"""The runner: ``python -m wallaroo APP [flags]`` (also installed as ``machida``).

It imports the application, calls ``application_setup(args)`` with the whole
command line, checks the returned description and runs it on the Rust engine.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import os
import signal
import sys
import traceback
from types import ModuleType
from typing import Any, Callable

from wallaroo import cluster, contract, kafka, metrics
from wallaroo.loader import AppNotFound, load_app
from wallaroo.plan import ApplicationError, compile_plan

log = logging.getLogger("wallaroo")

#: Exit codes.
EXIT_OK = 0
EXIT_RUN_FAILED = 1
EXIT_BAD_APP = 2
#: Stopped at once by a second Ctrl-C / SIGTERM (128 + SIGINT, as shells do).
EXIT_INTERRUPTED = 130

DESCRIPTION = """\
Run a Wallaroo Python application (0.4.2, 0.5 or 0.6.1 API, told from the
calls it makes) on the Rust engine.

APP is a .py file, a directory holding APP/APP.py (the directory goes on the
Python path, so sibling modules import), a module importable from the current
directory or PYTHONPATH, or a bundled example. The original form
`--application-module NAME` works too. The application's own flags (e.g.
--in, --out, --kafka_source_topic) may come anywhere: the application gets the
whole command line in application_setup(args).
"""

EPILOG = """\
sources and sinks:
  TCP sources listen on their address; TCP sinks connect to theirs. File
  sources (wallaroo.FileSourceConfig) end the run at end of file, after the
  sinks are flushed. A run with TCP sources ends on Ctrl-C or SIGTERM, after
  what the connections already sent has gone through.

bad input and errors:
  Input that cannot be framed or decoded is counted, logged with its position
  and kept in --dead-letter PATH (JSON lines) when given; the run goes on.
  An exception in a step prints the Python traceback with the step and the
  record, and stops the run (exit 1) unless --on-error skip, which counts the
  record, logs it (rate-limited) and keeps it in --dead-letter like bad input.

exit codes:
  0 finished (or stopped by Ctrl-C / SIGTERM), 1 the run failed (also when a
  sink could not deliver every record),
  2 the application or the command line is wrong, 130 stopped at once by a
  second Ctrl-C / SIGTERM (what was read was not all delivered).

Pony runtime flags of 0.4.2 scripts (--ponythreads=1, --ponynoblock, ...) and
-f, -l, --log-rotation, -u/--stop-pause, --spike-* are accepted and ignored.
"""



def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m wallaroo",
        usage="%(prog)s APP [app flags] [runner flags]",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--application-module", metavar="NAME", help="the application module (0.4.2 form of APP)"
    )
    run = parser.add_argument_group("running")
    run.add_argument(
        "--on-error",
        choices=("stop", "skip"),
        default="stop",
        help="when a step raises: stop the run (default) or count, log and skip the record",
    )
    run.add_argument(
        "--dead-letter", metavar="PATH", help="append every bad input to PATH (JSON lines)"
    )
    run.add_argument(
        "--log-level",
        default=os.environ.get("WALLAROO_LOG_LEVEL", "info"),
        choices=("debug", "info", "warning", "error"),
        help="log level of the runner and the engine (default info, env WALLAROO_LOG_LEVEL)",
    )
    run.add_argument(
        "--no-py2-compat",
        action="store_true",
        help="import the application's modules as they are (no Python 2 translation)",
    )
    run.add_argument(
        "--batch-size", type=int, default=1000, help="records per batch (default 1000)"
    )
    run.add_argument(
        "--max-records",
        type=int,
        metavar="N",
        help="each source ends after N records (a bounded run, e.g. of a Kafka topic)",
    )
    run.add_argument("--epoch-ms", type=int, default=100, help="epoch length in ms (default 100)")
    run.add_argument(
        "--max-frame-bytes",
        type=int,
        default=16 << 20,
        help="longer frames are bad input (default 16 MiB)",
    )
    run.add_argument(
        "--sink-connect-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long a TCP sink waits for its receiver (default 30)",
    )
    run.add_argument(
        "--snapshot-interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="with -r/--resilience-dir: time between snapshots (default 1; independent of "
        "--epoch-ms)",
    )
    run.add_argument(
        "--snapshot-give-up",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="with -r/--resilience-dir: stop the run (exit 1) when snapshots keep failing "
        "(disk full, ...) for longer than this (default 60); until then the keys of a "
        "snapshot not stored go into the next one",
    )
    kafka.add_arguments(parser)
    _demo_hook().add_arguments(parser)
    cluster.add_arguments(parser)
    metrics.add_arguments(parser)
    legacy = parser.add_argument_group("Wallaroo 0.4.2 runner flags")
    legacy.add_argument(
        "-m",
        "--metrics",
        metavar="HOST:PORT",
        help="metrics address: the initializer serves /metrics (Prometheus), /status and a "
        "live web page there for every worker (default: a free loopback port, logged)",
    )
    legacy.add_argument("-c", "--control", metavar="HOST:PORT", help="control address")
    legacy.add_argument("-d", "--data", metavar="HOST:PORT", help="data address")
    legacy.add_argument("-e", "--external", metavar="HOST:PORT", help="external channel address")
    legacy.add_argument(
        "-w", "--worker-count", type=int, metavar="N", help="workers in the cluster"
    )
    legacy.add_argument(
        "-t", "--cluster-initializer", action="store_true", help="this worker starts the cluster"
    )
    legacy.add_argument("-n", "--name", help="this worker's name")
    legacy.add_argument("-j", "--join", metavar="HOST:PORT", help="join a running cluster")
    legacy.add_argument(
        "-r",
        "--resilience-dir",
        metavar="DIR",
        help="crash recovery: each worker keeps snapshots of its state and source positions "
        "in DIR; started again with the same DIR, the run goes on from the last snapshot "
        "complete on every worker",
    )
    legacy.add_argument(
        "-x", "--my-control", metavar="HOST:PORT", help="this worker's control address"
    )
    legacy.add_argument("-y", "--my-data", metavar="HOST:PORT", help="this worker's data address")
    ignored = parser.add_argument_group("accepted and ignored (0.4.2 compatibility)")
    ignored.add_argument("-f", dest="ignored_f", metavar="X", help=argparse.SUPPRESS)
    ignored.add_argument("-l", dest="ignored_l", action="store_true", help=argparse.SUPPRESS)
    ignored.add_argument("--log-rotation", action="store_true", help=argparse.SUPPRESS)
    ignored.add_argument("-u", "--stop-pause", metavar="X", help=argparse.SUPPRESS)
    return parser


def _strip_ignored(argv: list) -> list:
    """Drop Pony runtime flags and --spike-* flags (with their values)."""
    kept = []
    skip_value = False
    for arg in argv:
        if skip_value:
            skip_value = False
            if not arg.startswith("-"):
                continue
        if arg.startswith("--pony") or arg.startswith("--spike"):
            skip_value = "=" not in arg
            continue
        kept.append(arg)
    return kept


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger().setLevel(getattr(logging, level.upper()))


def _fail(code: int, message: str) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return code


class _StopOnSignal:
    """Ctrl-C / SIGTERM: ask the engine to drain and stop (a flag, never an
    exception inside application code); a second signal stops at once."""

    def __init__(self, engine: Any, leave: Callable[[], bool] | None = None) -> None:
        self.engine = engine
        self.leave = leave
        self.count = 0

    def __call__(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.count > 1:
            # Stop without finishing; the exception interrupts a step that
            # is running (the engine reports it as the interruption).
            self.engine.request_stop(at_once=True)
            raise KeyboardInterrupt(signal.Signals(signum).name)
        if self.leave is not None and self.leave():
            log.info(
                "%s: leaving the cluster once this worker's keys are handed over",
                signal.Signals(signum).name,
            )
            return
        log.info("%s: stopping after what was read (again to stop at once)",
                 signal.Signals(signum).name)
        self.engine.request_stop()


def _check_runner_flags(opts: argparse.Namespace) -> str | None:
    if opts.snapshot_interval <= 0:
        return "--snapshot-interval must be positive"
    if opts.snapshot_give_up < 0:
        return "--snapshot-give-up must not be negative"
    if opts.kafka_sink_transactions and not opts.resilience_dir:
        return (
            "--kafka-sink-transactions commits output at each snapshot: it needs "
            "-r/--resilience-dir"
        )
    if opts.resilience_dir and opts.join:
        return f"-j/--join: {cluster.GROW_WITH_RESILIENCE}"
    return cluster.load_secret(opts)


def main(argv: list | None = None) -> int:
    """Entry point of ``python -m wallaroo`` and ``machida``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    app_spec = None
    if argv and not argv[0].startswith("-"):
        app_spec = argv[0]
    if "-h" in argv or "--help" in argv:
        parser.print_help()
        return EXIT_OK
    opts, _unknown = parser.parse_known_args(_strip_ignored(argv[1:] if app_spec else argv))
    _configure_logging(opts.log_level)
    app_spec = app_spec or opts.application_module
    if not app_spec:
        parser.print_usage(sys.stderr)
        return _fail(EXIT_BAD_APP, "no application given (APP or --application-module NAME)")
    problem = _check_runner_flags(opts)
    if problem:
        return _fail(EXIT_BAD_APP, problem)
    if opts.workers and opts.workers > 1:
        return cluster.supervise(argv, opts.workers, opts.cluster_secret)

    try:
        module = load_app(app_spec, py2_compat=not opts.no_py2_compat)
    except AppNotFound as err:
        return _fail(EXIT_BAD_APP, str(err))
    except SyntaxError as err:
        return _fail(EXIT_BAD_APP, f"{err.filename}:{err.lineno}: cannot compile: {err.msg}")
    except Exception as err:
        _print_user_traceback(err)
        return _fail(EXIT_BAD_APP, f"importing application {app_spec!r} failed (traceback above)")
    origin = getattr(module, "__file__", None) or app_spec
    setup = getattr(module, "application_setup", None)
    if not callable(setup):
        return _fail(EXIT_BAD_APP, f"{origin}: the application defines no application_setup(args)")
    demo = _demo_hook().Demo.for_app(module, opts)
    app_args = ["machida", *demo.app_argv(argv)]
    program = sys.argv[0]
    sys.argv[0] = "machida"  # argparse inside application_setup names the program
    try:
        actions = setup(app_args)
    except SystemExit as exit_:
        return _fail(
            EXIT_BAD_APP,
            f"{origin}: application_setup() exited while reading its arguments "
            f"(exit status {exit_.code}); see the message above",
        )
    except Exception as err:
        _print_user_traceback(err)
        return _fail(EXIT_BAD_APP, f"{origin}: application_setup() raised (traceback above)")
    finally:
        sys.argv[0] = program
    try:
        plan = compile_plan(actions, origin, args=app_args)
    except ApplicationError as err:
        return _fail(EXIT_BAD_APP, str(err))
    if plan.get("api_version") != "0.4.2":
        from wallaroo.api05 import flush_every_line

        flush_every_line()
    plan.update(_app_codecs(module))
    return run_plan(plan, opts, demo=demo)


def _app_codecs(module: Any) -> dict:
    """The application module's own serialize/deserialize, when it defines both."""
    import wallaroo

    serialize = getattr(module, "serialize", None)
    deserialize = getattr(module, "deserialize", None)
    own = callable(serialize) and callable(deserialize) and serialize is not wallaroo.serialize
    return {"serialize": serialize, "deserialize": deserialize} if own else {}


#: Allocations between young-generation garbage collections while the engine
#: runs (Python's default is 700). Records in flight survive a few hundred
#: allocations, so the default collected them again and again for nothing.
GC_THRESHOLD = (10_000, 10, 10)


def _tune_gc() -> None:
    """Objects made before the run (the app, its modules) are never collected
    again, and young collections run less often. No collection first: it
    took milliseconds of every start to free a few dozen objects."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


def _demo_hook() -> ModuleType:
    """The demo (:mod:`wallaroo.demo`): the runner's one way to it, imported
    when the runner starts, never by the modules an app imports."""
    from wallaroo import demo

    return demo


def _raise_open_files_limit() -> None:
    """Sockets and files of the data path (and the metrics server's capped
    connections) get every descriptor the hard limit allows."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError) as err:
        log.debug("open files limit left as it is: %s", err)


def run_plan(plan: dict, opts: argparse.Namespace, demo: Any | None = None) -> int:
    """Run a compiled plan on the engine and report how it went. ``demo``: the
    run's :class:`wallaroo.demo.Demo`, which starts its companions, if any,
    beside the engine."""
    from wallaroo import _engine

    _tune_gc()
    _raise_open_files_limit()

    membership = None
    members = cluster.Cluster(opts, plan["name"]) if cluster.wanted(opts) else None
    observer = metrics.Observer(opts, plan["name"])
    kafka_setup = kafka.KafkaSetup(opts)
    try:
        if members is None or opts.cluster_initializer:
            kafka_setup.prepare(plan)
        if members is not None:
            membership = members.form(
                {"embedded_kafka": kafka_setup.bootstrap_servers}
                if opts.cluster_initializer
                else None
            )
            if not opts.cluster_initializer:
                kafka_setup.prepare(plan, embedded_bootstrap=membership.extra.get("embedded_kafka"))
            members.on_reconfigure(_engine.reconfigure)
            if opts.resilience_dir:
                members.on_restarted = lambda name: _engine.restart(
                    f"worker {name!r} started again"
                )
            if opts.cluster_initializer and opts.external:
                members.serve_external(opts.external)
            members.watch(
                (lambda name: _engine.restart(f"lost worker {name!r}"))
                if opts.resilience_dir
                else (lambda name: _engine.abort(f"lost worker {name!r}")),
                on_message=observer.on_peer_message,
                on_failed=lambda name, why: _engine.abort(f"worker {name!r} failed: {why}"),
            )
    except (ValueError, _engine.ConfigError) as err:
        return _fail(EXIT_BAD_APP, str(err))
    except cluster.ClusterSetupError as err:
        return _fail(EXIT_RUN_FAILED, f"cluster: {err}")
    options = contract.run_options(opts, plan, membership)
    previous: dict = {}
    if threading_is_main():
        member = members is not None and not opts.cluster_initializer
        # A worker of --workers N stops on a signal (its supervisor passes
        # it to every worker); one started by hand leaves the cluster.
        supervised = os.environ.get(cluster.SUPERVISED_ENV) == "1"
        can_leave = member and not opts.resilience_dir and not supervised
        leave = members.request_leave if can_leave else None
        handler = _StopOnSignal(_engine, leave)
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, handler)
    log.info(
        "%srunning application %r (%d pipelines)",
        _worker_label(members), plan["name"], len(plan["pipelines"]),
    )  # fmt: skip
    summary = None
    code, failure = EXIT_OK, None
    try:
        observer.start(members)
        if demo is not None:
            demo.start(plan, kafka_setup.bootstrap_servers)
        summary = _engine.run(plan, options)
        # Before members.finish: a worker that lost records tells the cluster.
        code, failure = _outcome(summary)
    except _engine.StepError as err:
        code, failure = EXIT_RUN_FAILED, f"the application failed: {err}"
    except _engine.ConfigError as err:
        code, failure = EXIT_RUN_FAILED, str(err)
    except _engine.ClusterError as err:
        code, failure = EXIT_RUN_FAILED, f"cluster: {err}"
    finally:
        if members is not None:
            ok, reason = members.finish(failure is None, failure)
            if not ok and failure is None:
                code, failure = EXIT_RUN_FAILED, f"cluster: {reason}"
        observer.stop()
        if demo is not None:
            demo.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if summary is not None:
        _report(summary, _worker_label(members))
    if failure is not None:
        return _fail(code, failure)
    return EXIT_OK


def _outcome(summary: dict) -> tuple:
    """``(exit code, failure or None)`` of a run that returned ``summary``:
    stopped at once by a second signal, records a sink did not deliver, or a
    sink whose end failed (its last flush or transaction), is not a success."""
    pipelines = summary["pipelines"].values()
    if summary.get("stopped_at_once"):
        read = sum(c["records_in"] for c in pipelines)
        delivered = sum(c["delivered"] for c in pipelines)
        return EXIT_INTERRUPTED, (
            f"interrupted: stopped at once by a second signal; {read} records read, "
            f"{delivered} outputs delivered; what was in flight was not"
        )
    undelivered = sum(c["sink_errors"] for c in pipelines)
    failures = summary.get("sink_failures") or []
    if failures:
        # The end of a sink failed (a last flush, a last Kafka transaction).
        return EXIT_RUN_FAILED, f"{undelivered} records were not delivered: " + "; ".join(failures)
    if undelivered:
        return EXIT_RUN_FAILED, (
            f"{undelivered} records were not delivered (see the summary and the sink errors above)"
        )
    return EXIT_OK, None


def threading_is_main() -> bool:
    """Whether this is the main thread (signal handlers can only be set there)."""
    import threading

    return threading.current_thread() is threading.main_thread()


#: Frames of these files are the runner's and the import system's, not the
#: application's: a traceback of the application starts after them.
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_IMPORTLIB_DIR = os.path.dirname(os.path.abspath(importlib.__file__))


def _is_ours(filename: str) -> bool:
    if filename.startswith("<frozen "):
        return True
    path = os.path.abspath(filename)
    if path.startswith(_IMPORTLIB_DIR + os.sep):
        return True
    examples = os.path.join(_PACKAGE_DIR, "examples") + os.sep
    return path.startswith(_PACKAGE_DIR + os.sep) and not path.startswith(examples)


def _print_user_traceback(err: BaseException) -> None:
    """Print ``err``'s traceback from the application's first frame on (the
    runner's and importlib's frames before it say nothing to the user); the
    whole traceback when no frame is the application's."""
    tb = err.__traceback__
    first = tb
    while first is not None and _is_ours(first.tb_frame.f_code.co_filename):
        first = first.tb_next
    traceback.print_exception(type(err), err, first if first is not None else tb)


def _worker_label(members: Any) -> str:
    """``"worker 'NAME': "`` in a cluster, where every worker logs its own
    summary (only the worker reading a file source counts records in, only the
    one writing a file sink delivers), else ``""``."""
    membership = getattr(members, "membership", None)
    if membership is None or not 0 <= membership.index < len(membership.names):
        return ""
    return f"worker {membership.names[membership.index]!r}: "


def _report(summary: dict, worker: str = "") -> None:
    """Log the run's summary (``worker``: the label of this worker's lines)."""
    for name, counters in summary["pipelines"].items():
        log.log(
            logging.ERROR if counters["sink_errors"] else logging.INFO,
            "%spipeline %r: %d in, %d out, %d filtered, %d skipped after errors, "
            "%d delivered, %d not delivered",
            worker,
            name,
            counters["records_in"],
            counters["records_out"],
            counters["dropped"],
            counters["skipped_errors"],
            counters["delivered"],
            counters["sink_errors"],
        )
    if summary["bad_input"]:
        kinds = ", ".join(f"{n} {kind}" for kind, n in summary["bad_input"].items())
        log.warning("bad input: %s", kinds)
    if summary.get("dead_letter_failed"):
        log.error(
            "dead-letter file: %d bad records could not be written to it (see the errors above)",
            summary["dead_letter_failed"],
        )
    log.info(
        "%sfinished in %.2f s%s",
        worker,
        summary["seconds"],
        " (stopped by signal)" if summary["interrupted"] else "",
    )
