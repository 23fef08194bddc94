import sys

from wallaroo.runner import main

sys.exit(main())
