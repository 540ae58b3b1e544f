"""``python -m miniagents.persistence inspect run.db``."""

import sys

from miniagents.persistence._inspect import main

sys.exit(main())
