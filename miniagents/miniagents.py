"""Compatibility module: ``from miniagents.miniagents import ...`` keeps working (the original import path)."""

from miniagents import *  # noqa: F403
from miniagents import __all__  # noqa: F401
