"""``python -m wallaroo.experimental SCRIPT [ARGS...]``: run a connector script.

Wallaroo 0.5's connector scripts (``connectors/udp_source`` ...) are Python 2
programs. This compiles ``SCRIPT`` the way application modules are
(:mod:`wallaroo.py2compat`: Python 3 as it is, Python 2 translated) and runs
it as ``__main__`` with ``sys.argv = [SCRIPT, *ARGS]``; the application it
names with ``--application-module`` is imported as the runner imports it.
What the translation cannot know stays the script's business (e.g. sending
a ``str`` where Python 3 sockets want ``bytes``).
"""

from __future__ import annotations

import builtins
import os
import sys


def main(argv: list | None = None) -> int:
    """Run the script ``argv[0]`` with the arguments after it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        return 2
    path = argv[0]
    try:
        with open(path, "rb") as script:
            data = script.read()
    except OSError as err:
        print(f"error: cannot read the connector script {path!r}: {err}", file=sys.stderr)
        return 2
    from wallaroo.py2compat.compiler import compile_module

    code = compile_module(data, path).code
    sys.argv = argv
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    exec(code, {"__name__": "__main__", "__file__": path, "__builtins__": builtins})
    return 0


if __name__ == "__main__":
    sys.exit(main())
