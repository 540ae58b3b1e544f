"""pytest plugin: record the LLM exchanges of a test once, replay them offline afterwards.

Mark a test (sync or async, any anyio backend) whose agent graph calls LLM agents::

    @pytest.mark.llm_cassette                      # cassettes/<module>.<test>.jsonl next to the test file
    @pytest.mark.llm_cassette("checkout.jsonl")    # cassettes/checkout.jsonl next to the test file
    @pytest.mark.llm_cassette("checkout", timing="original", ignore_fields=["metadata.user_id"])

or request the ``llm_cassette`` fixture (a :class:`~miniagents.testing.Cassette`, active during the test).
The first run records against the real provider (the cassette file does not exist yet); later runs replay it
through :class:`~miniagents.testing.FakeLLMServer` on ``127.0.0.1``.  ``--llm-cassette-mode`` (or the
``MINIAGENTS_CASSETTE_MODE`` environment variable) overrides the mode of every cassette: ``record`` re-records,
``replay`` fails when a cassette is missing (for CI), ``record-missing`` records only new requests, ``off``
disables cassettes.  Tests parametrized only by ``anyio_backend`` share one cassette.  A cassette is written only
when its test passed (not when it failed, was skipped or was marked ``xfail``).  Marker keywords are those of
:class:`~miniagents.testing.Cassette`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from miniagents.testing._cassette import _MODES, CASSETTE_MODE_ENV, Cassette

__all__ = ["llm_cassette"]

_MARKER = "llm_cassette"
_CALL_PASSED = pytest.StashKey[bool]()
_UNSAFE = re.compile(r"[^A-Za-z0-9_.=-]+")


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--llm-cassette-mode``."""
    group = parser.getgroup("miniagents", "miniagents LLM cassettes")
    group.addoption(
        "--llm-cassette-mode",
        choices=_MODES,
        default=None,
        help=f"mode of every LLM cassette (default: ${CASSETTE_MODE_ENV}, else the marker's mode, else auto)",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker."""
    config.addinivalue_line(
        "markers",
        f"{_MARKER}(name=None, **options): record the test's LLM exchanges to a cassette on the first run and "
        "replay them offline afterwards (miniagents.testing.Cassette options)",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give every marked test the ``llm_cassette`` fixture."""
    for item in items:
        fixturenames = getattr(item, "fixturenames", None)
        marked = item.get_closest_marker(_MARKER) is not None
        if marked and fixturenames is not None and _MARKER not in fixturenames:
            fixturenames.append(_MARKER)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember whether the test body really passed (only then is its cassette written).

    A failed, skipped or expected-to-fail test (``xfail``: failing as expected, or passing unexpectedly) does not
    pass for this purpose: what it recorded is not known to be a good exchange.
    """
    report = yield
    if report.when == "call":
        item.stash[_CALL_PASSED] = report.passed and not hasattr(report, "wasxfail")
    return report


def cassette_path(node: pytest.Item, name: str | None) -> Path:
    """The cassette file of *node*: *name* (``.jsonl`` added unless it ends so) or one derived from the test.

    A relative name is taken from the ``cassettes`` directory next to the test file.
    """
    if name is None:
        params = getattr(getattr(node, "callspec", None), "params", {})
        shown = [f"{key}={value}" for key, value in sorted(params.items()) if key != "anyio_backend"]
        original = getattr(node, "originalname", node.name)
        name = f"{Path(str(node.path)).stem}.{original}" + (f"[{','.join(shown)}]" if shown else "")
        name = _UNSAFE.sub("_", name)
    path = Path(name if name.endswith(".jsonl") else name + ".jsonl")
    if not path.is_absolute():
        path = Path(str(node.path)).parent / "cassettes" / path
    return path


@pytest.fixture
def llm_cassette(request: pytest.FixtureRequest) -> Iterator[Cassette]:
    """A :class:`~miniagents.testing.Cassette` active for the whole test (see the module docstring)."""
    marker = request.node.get_closest_marker(_MARKER)
    args: tuple[Any, ...] = marker.args if marker is not None else ()
    options: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}
    if len(args) > 1:
        raise pytest.UsageError(f"@pytest.mark.{_MARKER} takes at most one positional argument (the name)")
    name = options.pop("name", args[0] if args else None)
    forced = request.config.getoption("--llm-cassette-mode")
    if forced is not None:
        options["mode"] = forced
    elif os.environ.get(CASSETTE_MODE_ENV):
        options["mode"] = os.environ[CASSETTE_MODE_ENV]
    cassette = Cassette(cassette_path(request.node, name), **options)
    cassette.__enter__()
    try:
        yield cassette
    finally:
        cassette._close_sync()
    # Mismatches fail the test (as a teardown error when the test failed already); only a passed test saves.
    cassette._finish(None, save=request.node.stash.get(_CALL_PASSED, False))
