# Python 2 package: implicit relative imports of sibling modules.
from first import greet
import second

assert second.NAME <> "", `second.NAME`
