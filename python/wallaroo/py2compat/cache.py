"""The cache of translations from Python 2 (in :func:`.codecache.cache_dir`)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile

from wallaroo.py2compat.codecache import TRANSLATOR_VERSION
from wallaroo.py2compat.translate import fissix_version

log = logging.getLogger("wallaroo.py2compat")

_TRAILER = "# wallaroo-rs py2compat line map: "


def _cache_file(directory: str, path: str, data: bytes, mode: str) -> str:
    digest = hashlib.sha256()
    for part in ("wallaroo-rs py2compat", TRANSLATOR_VERSION, fissix_version(), mode, path):
        digest.update(part.encode("utf-8", "surrogateescape") + b"\0")
    digest.update(data)
    stem = os.path.splitext(os.path.basename(path))[0]
    return os.path.join(directory, f"{stem}-{digest.hexdigest()[:32]}.py")


def _read_cache(cache_file: str) -> tuple | None:
    try:
        with open(cache_file, encoding="utf-8") as f:
            content = f.read()
    except (OSError, ValueError):
        return None
    body, sep, trailer = content.rpartition("\n" + _TRAILER)
    if not sep:
        return None
    try:
        lines = json.loads(trailer)
    except ValueError:
        return None
    if lines == "same":
        lines = None
    elif not (isinstance(lines, list) and all(isinstance(n, int) for n in lines)):
        return None
    return body + "\n", lines


def _write_cache(cache_file: str, translated: str, lines: list | None) -> bool:
    content = f"{translated}{_TRAILER}{json.dumps('same' if lines is None else lines)}\n"
    directory = os.path.dirname(cache_file)
    tmp = None
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".py")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(content)
        os.replace(tmp, cache_file)
        return True
    except OSError as err:
        log.debug("cannot write the translation cache %s: %s", cache_file, err)
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return False
