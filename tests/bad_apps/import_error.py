"""Imports a module that does not exist."""

import wallaroo
import wallaroo_no_such_module_xyz  # noqa: F401


def application_setup(args):
    return wallaroo.ApplicationBuilder("never").build()
