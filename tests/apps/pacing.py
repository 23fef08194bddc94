"""Pacing for the crash-recovery test apps: slow a run down so that a test
can kill it many times, and let it finish at full speed once it is done.

``--pause-every N --pause-ms MS`` sleeps MS milliseconds every N records (per
process). With ``--hold-file PATH`` the pauses apply only while PATH exists:
a test keeps the file while it still has kills to make and deletes it after
the last one, so the rest of the input runs unpaced. A run's input can then
be much longer than the kills need (on a loaded machine a life's start-up
can take seconds) without making the test longer.
"""

import argparse
import os
import time


class Pacer:
    """Counts records and sleeps as the flags say (see the module doc)."""

    def __init__(self) -> None:
        self.every = 0
        self.seconds = 0.0
        self.hold_file = None
        self.seen = 0

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--pause-every", type=int, default=0)
        parser.add_argument("--pause-ms", type=float, default=0.0)
        parser.add_argument("--hold-file")

    def configure(self, opts: argparse.Namespace) -> None:
        self.every = opts.pause_every
        self.seconds = opts.pause_ms / 1000.0
        self.hold_file = opts.hold_file

    def tick(self) -> None:
        """One record went through: pause if it is time to."""
        if not self.every:
            return
        self.seen += 1
        if self.seen % self.every:
            return
        if self.hold_file is not None and not os.path.exists(self.hold_file):
            self.every = 0  # released: the rest runs unpaced
            return
        time.sleep(self.seconds)
