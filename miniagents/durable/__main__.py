"""``python -m miniagents.durable worker ...``: see :mod:`miniagents.durable._worker`."""

import sys

from miniagents.durable._worker import main

if __name__ == "__main__":
    sys.exit(main())
