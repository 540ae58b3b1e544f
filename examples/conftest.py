"""pytest setup of the example tests: the cassette plugin (not needed where miniagents' pytest11 entry point is
installed, which registers it for every pytest run)."""

pytest_plugins = ["miniagents.testing.pytest_plugin"]
