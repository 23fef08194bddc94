"""Text helpers, Python 2: implicit relative import of the sibling module."""
from fmt import shout, VERSION

assert VERSION <> 0
