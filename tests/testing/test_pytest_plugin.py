"""The pytest plugin: a marked test records on its first run and replays offline afterwards; only a test that
really passed writes its cassette."""

from __future__ import annotations

import json

import pytest

from miniagents.testing._cassette_format import load_cassette

pytest_plugins = ["pytester"]

TEST_FILE = """
import os
import pytest
from miniagents import MiniAgents
from miniagents.llms import openai_agent

@pytest.fixture(params=["trio", "asyncio"])
def anyio_backend(request):
    return request.param

@pytest.mark.anyio
@pytest.mark.llm_cassette{marker}
async def test_graph():
    base = os.environ.get("PROVIDER_URL", "http://127.0.0.1:9/v1")  # set while recording
    async with MiniAgents():
        reply = openai_agent.inquire("{question}", model="m", base_url=base, api_key=os.environ.get("KEY", ""))
        assert await reply.as_single_text() == "recorded answer"
"""


def write_test(pytester: pytest.Pytester, marker: str = "", question: str = "hi") -> None:
    pytester.makepyfile(test_graph=TEST_FILE.replace("{marker}", marker).replace("{question}", question))


def run_live(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """Run the tests with a scripted provider (FakeLLMServer started in a thread) at PROVIDER_URL."""
    pytester.makeconftest(
        """
import os
import anyio.from_thread
import pytest
from miniagents.testing import FakeLLMServer, openai_stream

pytest_plugins = ["miniagents.testing.pytest_plugin"]

@pytest.fixture(autouse=True, scope="session")
def provider():
    with anyio.from_thread.start_blocking_portal() as portal:
        with portal.wrap_async_context_manager(FakeLLMServer.serve()) as server:
            server.handler = lambda request: openai_stream(["recorded ", "answer"])
            os.environ["PROVIDER_URL"] = server.openai_base_url
            os.environ["KEY"] = "sk-live-key-0123456789"
            yield server
            del os.environ["PROVIDER_URL"], os.environ["KEY"]
"""
    )
    return pytester.runpytest_subprocess("-p", "anyio", *args)


def run_offline(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    pytester.makeconftest('pytest_plugins = ["miniagents.testing.pytest_plugin"]\n')
    return pytester.runpytest_subprocess("-p", "anyio", *args)


def test_records_once_then_replays_offline(pytester: pytest.Pytester) -> None:
    write_test(pytester)
    run_live(pytester).assert_outcomes(passed=2)  # asyncio records, trio replays the same cassette
    cassette = pytester.path / "cassettes" / "test_graph.test_graph.jsonl"
    text = cassette.read_text(encoding="utf-8")
    assert "sk-live-key" not in text and json.loads(text.split("\n")[1])["request"]["body"]["model"] == "m"
    run_offline(pytester).assert_outcomes(passed=2)  # no provider at all now
    assert cassette.read_text(encoding="utf-8") == text


def test_named_cassette_and_forced_modes(pytester: pytest.Pytester) -> None:
    write_test(pytester, '("shared/answers")')
    result = run_offline(pytester, "--llm-cassette-mode=replay")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*answers.jsonl does not exist; record it first*"])
    run_live(pytester, "--llm-cassette-mode=record").assert_outcomes(passed=2)
    assert (pytester.path / "cassettes" / "shared" / "answers.jsonl").exists()
    run_offline(pytester, "--llm-cassette-mode=replay").assert_outcomes(passed=2)


def test_a_changed_request_fails_with_a_diff_and_keeps_the_cassette(pytester: pytest.Pytester) -> None:
    write_test(pytester)
    run_live(pytester).assert_outcomes(passed=2)
    cassette = pytester.path / "cassettes" / "test_graph.test_graph.jsonl"
    before = cassette.read_text(encoding="utf-8")
    write_test(pytester, question="hello")
    result = run_offline(pytester)
    result.assert_outcomes(
        failed=2, errors=2
    )  # the agent's error fails the test, the cassette's the teardown
    result.stdout.fnmatch_lines(
        ['*-    "content": "hi",*', '*+    "content": "hello",*', "*CassetteMismatchError*"]
    )
    assert cassette.read_text(encoding="utf-8") == before


# ---------------------------------------------------------------------------------------------------------------
# Only a test that really passed writes its cassette
XFAIL_TEST = """
import os
import pytest
from miniagents import MiniAgents
from miniagents.llms import openai_agent

@pytest.fixture(params=["trio", "asyncio"])
def anyio_backend(request):
    return request.param

@pytest.mark.anyio
@pytest.mark.llm_cassette
@pytest.mark.xfail(reason="the graph is known to answer wrongly", strict={strict})
async def test_graph():
    async with MiniAgents():
        reply = openai_agent.inquire("hi", model="m", base_url=os.environ["PROVIDER_URL"], api_key="k")
        assert await reply.as_single_text() == "{expected}"
"""


def test_an_xfail_test_does_not_write_its_cassette(pytester: pytest.Pytester) -> None:
    cassette = pytester.path / "cassettes" / "test_graph.test_graph.jsonl"
    # Fails as expected: what it recorded is not known to be good.
    pytester.makepyfile(test_graph=XFAIL_TEST.format(expected="another answer", strict=False))
    run_live(pytester).assert_outcomes(xfailed=2)
    assert not cassette.parent.exists()
    # Passes unexpectedly (not strict): still marked as expected to fail, so not written either.
    pytester.makepyfile(test_graph=XFAIL_TEST.format(expected="recorded answer", strict=False))
    run_live(pytester).assert_outcomes(xpassed=2)
    assert not cassette.parent.exists()
    # The same test without the marker passes and writes it.
    marker = '@pytest.mark.xfail(reason="the graph is known to answer wrongly", strict=False)\n'
    pytester.makepyfile(
        test_graph=XFAIL_TEST.format(expected="recorded answer", strict=False).replace(marker, "")
    )
    run_live(pytester).assert_outcomes(passed=2)
    assert len(load_cassette(cassette)) == 1
