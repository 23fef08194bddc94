"""Names of a package imported from its submodules on first use (PEP 562), so
that a run imports only the parts it needs (start-up time)."""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_names(package: str, where: dict) -> Callable[[str], Any]:
    """The module ``__getattr__`` of ``package``: a name of ``where`` (name ->
    submodule) is imported from its submodule when first read, then kept in
    the package's namespace."""

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(importlib.import_module(package), name, value)
        return value

    return __getattr__
