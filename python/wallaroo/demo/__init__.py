"""The star leaders demo, reached by the runner through one hook: :class:`Demo`.

The demo is opt-in. Its companions -- a streamer feeding generated GitHub
events into the app's source topic, the live dashboard of its sink topic and
the leaderboard lines on the terminal -- start around

* the bundled example, ``python -m wallaroo star_leaders``, when it runs on the
  embedded broker (no broker given) and no ``star_leaders`` module of the
  user's shadows it;
* any application given ``--demo``.

``--no-demo`` turns them off. A user's own ``star_leaders`` runs like any
other app: nothing is written into its topics and no dashboard starts; on the
embedded broker the log says how to feed it. The companions run as child
processes of the runner (:mod:`wallaroo.demo.companions`), never in the
engine's process. This module imports nothing heavy: the runner imports it
only inside functions.
"""

from __future__ import annotations

import argparse
import logging
from types import ModuleType
from typing import Any

log = logging.getLogger("wallaroo.demo")

#: The bundled example the demo accompanies without being asked.
STAR_LEADERS = "star_leaders"

#: The original example's primary.sh flags, filled in when absent.
STAR_LEADERS_DEFAULTS = (
    ("--kafka_source_topic", "gharchive"),
    ("--kafka_sink_topic", "leaderboard"),
    ("--kafka_sink_max_message_size", "250000"),
    ("--kafka_sink_max_produce_buffer_ms", "10"),
)

RULE = """\
The demo (a streamer writing generated GitHub events into the source topic, the
live dashboard of the sink topic, leaderboard lines on the terminal) starts
only around the bundled star_leaders example on the embedded broker, or around
any app given --demo. A star_leaders module of your own runs like any app."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The runner's flags for the demo."""
    group = parser.add_argument_group("demo (python -m wallaroo star_leaders)", RULE)
    group.add_argument(
        "--demo",
        action="store_true",
        help="start the demo companions around this app (fills in the star leaders "
        "topic flags where absent)",
    )
    group.add_argument(
        "--no-demo",
        action="store_true",
        help="run only the app: no streamer, dashboard or terminal leaderboard (wins "
        "over --demo)",
    )
    group.add_argument(
        "--demo-speedup",
        type=float,
        default=24.0,
        metavar="X",
        help="speed-up of the demo's event streamer (default 24, as the original)",
    )
    group.add_argument(
        "--demo-events",
        type=int,
        metavar="N",
        help="stop the demo's streamer after N events (default: endless)",
    )
    group.add_argument(
        "--dashboard-port",
        type=int,
        default=8080,
        metavar="PORT",
        help="demo dashboard port on 127.0.0.1 (default 8080; a free port if taken)",
    )


def kafka_ends(plan: dict) -> tuple:
    """The Kafka sources and the Kafka sinks of ``plan`` (two lists, in
    pipeline order; the sinks of a ``to_sinks`` fan-out included)."""
    sources, sinks = [], []
    for pipeline in plan["pipelines"]:
        if pipeline["source"].get("kind") == "kafka":
            sources.append(pipeline["source"])
        sink = pipeline["sink"]
        for one in [] if sink is None else sink.get("sinks", [sink]):
            if one.get("kind") == "kafka":
                sinks.append(one)
    return sources, sinks


class Demo:
    """What the demo does for one run, decided from the application and the flags.

    ``bundled``: the application is the star leaders example shipped with the
    package (resolved by :func:`wallaroo.loader.load_app` from the examples,
    not a module of the user's that happens to have its name).
    """

    def __init__(self, opts: argparse.Namespace, bundled: bool) -> None:
        self.opts = opts
        self.bundled = bundled
        self.companions: Any | None = None

    @classmethod
    def for_app(cls, module: ModuleType, opts: argparse.Namespace) -> Demo:
        """The demo of a run of ``module``."""
        from wallaroo.loader import is_bundled

        bundled = is_bundled(module) and module.__name__ == STAR_LEADERS
        return cls(opts, bundled)

    def starts_companions(self, on_embedded: bool) -> bool:
        """The rule: ``--demo``, or the bundled example on the embedded broker;
        never with ``--no-demo``."""
        if self.opts.no_demo:
            return False
        return self.opts.demo or (self.bundled and on_embedded)

    def app_argv(self, argv: list) -> list:
        """``argv`` with the star leaders topic flags added where absent (bundled
        example or ``--demo``)."""
        if not (self.bundled or self.opts.demo):
            return argv
        present = {arg.split("=", 1)[0] for arg in argv}
        extra = []
        for flag, value in STAR_LEADERS_DEFAULTS:
            if flag not in present:
                extra += [flag, value]
        return [*argv, *extra]

    def start(self, plan: dict, embedded_bootstrap: str | None) -> None:
        """Start the companions the run gets, if any; otherwise, on the embedded
        broker, log how to feed the app's source topics."""
        sources, sinks = kafka_ends(plan)
        ends = sources + sinks
        on_embedded = bool(ends) and all(end["bootstrap"] == embedded_bootstrap for end in ends)
        if self.starts_companions(on_embedded):
            from wallaroo.demo.companions import Companions

            self.companions = Companions(self.opts, plan)
            self.companions.start()
            return
        if embedded_bootstrap is None:
            return
        for source in sources:
            if source["bootstrap"] == embedded_bootstrap:
                log.info(
                    "nothing else writes to topic %r: produce to it at %s, e.g. "
                    "python -m wallaroo.demo.streamer --brokers %s --topic %s "
                    "(or run with --demo)",
                    source["topic"],
                    embedded_bootstrap,
                    embedded_bootstrap,
                    source["topic"],
                )

    def stop(self) -> None:
        """Stop the companions, if any were started."""
        if self.companions is not None:
            self.companions.stop()
            self.companions = None
