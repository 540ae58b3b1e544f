"""The cassette tests load the pytest plugin themselves (the package's pytest11 entry point may not be installed)."""

pytest_plugins = ["pytester", "miniagents.testing.pytest_plugin"]
