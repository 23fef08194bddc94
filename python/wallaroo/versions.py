"""Which Wallaroo API version (0.4.2, 0.5.x, 0.6.x) an application is written for.

One ``wallaroo`` module serves all three. Calls that only some versions had
leave a *mark* (the call as the app wrote it and the versions that allowed
it) on the object they return or in the action list; :func:`decide` takes the
marks of one application and returns its version, or raises naming the first
call that no version allowed together with the calls before it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

V042 = "0.4.2"
V05 = "0.5"
V06 = "0.6"
ALL = frozenset((V042, V05, V06))
BUILDER = frozenset((V042, V05))
ONLY_042 = frozenset((V042,))
ONLY_05 = frozenset((V05,))
SINCE_05 = frozenset((V05, V06))
ONLY_06 = frozenset((V06,))


class Mark(NamedTuple):
    """A call only some API versions had."""

    call: str
    versions: frozenset


class VersionMixError(Exception):
    """The application uses calls that no single Wallaroo version had together."""


def _names(versions: Iterable[str]) -> str:
    order = (V042, V05, V06)
    return "/".join(v for v in order if v in versions)


def mark_of(obj: Any) -> Mark | None:
    """The mark an API object carries, if any."""
    mark = getattr(obj, "_api_mark", None)
    return mark if isinstance(mark, Mark) else None


def decide(marks: Iterable[Mark | None]) -> str:
    """The oldest version every mark allows; ``VersionMixError`` when none does.

    The oldest, so that an app using only calls 0.4.2 had keeps 0.4.2's behaviour.
    """
    allowed = set(ALL)
    seen: list = []
    for mark in marks:
        if mark is None:
            continue
        narrowed = allowed & mark.versions
        if not narrowed:
            before = next(
                (m for m in seen if not (m.versions & mark.versions)),
                seen[-1] if seen else mark,
            )
            raise VersionMixError(
                f"{mark.call} is Wallaroo {_names(mark.versions)} API, but "
                f"{before.call} is Wallaroo {_names(before.versions)} API; "
                "no Wallaroo version had both (an application is written for one of "
                "0.4.2, 0.5 or 0.6)"
            )
        allowed = narrowed
        seen.append(mark)
    for version in (V042, V05, V06):
        if version in allowed:
            return version
    raise AssertionError("unreachable")
