"""The public surface is pinned: names exported from `miniagents` (and the original import path)."""

from __future__ import annotations

import miniagents
import miniagents.miniagents as legacy

PUBLIC = {
    "AWAIT",
    "CLEAR",
    "AgentCall",
    "AgentCallCancelledError",
    "BufferStatistics",
    "CallObserver",
    "CallOutcome",
    "CallRecord",
    "CallStatistics",
    "ContextAttachment",
    "ContextStatistics",
    "ErrorMessage",
    "FrozenDict",
    "InteractionContext",
    "LLMRequestInfo",
    "LimiterClock",
    "Message",
    "MessagePromise",
    "MessageSequencePromise",
    "MessageSequenceWriter",
    "MessageType",
    "MessageWriter",
    "MiniAgent",
    "MiniAgents",
    "MiniAgentsError",
    "NoActiveContextError",
    "Promise",
    "RateKeyStatistics",
    "RateLease",
    "RateLimit",
    "RateLimiter",
    "SequenceClosedError",
    "SequenceCycleError",
    "StopLoop",
    "Store",
    "StreamWriter",
    "StreamedPromise",
    "TextMessage",
    "WrongEventLoopError",
    "__version__",
    "achain_loop",
    "api_key_fingerprint",
    "miniagent",
    "share_by_reference",
}


def test_all_is_exactly_the_public_surface() -> None:
    assert set(miniagents.__all__) == PUBLIC
    for name in PUBLIC:
        assert hasattr(miniagents, name), name


def test_public_classes_claim_the_public_module() -> None:
    # Everything is importable from the package root; nothing public lives only in a private module.
    for name in PUBLIC - {"__version__", "AWAIT", "CLEAR", "MessageType", "CallOutcome"}:
        obj = getattr(miniagents, name)
        assert getattr(obj, "__doc__", None), f"{name} needs a docstring"


def test_original_import_path_still_works() -> None:
    for name in PUBLIC - {"__version__"}:
        assert getattr(legacy, name) is getattr(miniagents, name)


def test_package_is_typed() -> None:
    from importlib.resources import files

    assert files("miniagents").joinpath("py.typed").is_file()


def test_testing_kit_exports_resolve() -> None:
    import miniagents.testing as testing

    for name in testing.__all__:
        assert getattr(testing, name) is not None, name


def test_asgi_namespace_is_pinned() -> None:
    import miniagents.asgi as asgi

    assert asgi.__all__ == sorted(
        [
            "EventStreamResponse",
            "MiniAgentsMiddleware",
            "ServerSentEvent",
            "error_details",
            "error_payload",
            "reply_events",
        ]
    )
    for name in asgi.__all__:
        assert getattr(asgi, name).__module__ == "miniagents.asgi", name


def test_testing_kit_exports_the_fake_server_builders() -> None:
    import miniagents.testing as testing
    from miniagents.testing import fake_llm_server

    for name in ("anthropic_stream", "openai_stream", "responses_stream"):
        assert name in testing.__all__ and name in fake_llm_server.__all__, name
        assert getattr(testing, name) is getattr(fake_llm_server, name), name
    assert testing.__all__ == sorted(testing.__all__)


def test_llms_exports_structured_output_and_parts_sorted_and_documented() -> None:
    import miniagents.llms as llms

    assert {
        "DocumentPart",
        "ImagePart",
        "OutputValidationError",
        "Usage",
        "UsageLimit",
        "UsageLimitExceededError",
        "output_of",
        "user_message",
    } <= set(llms.__all__)
    assert llms.__all__ == sorted(llms.__all__)
    assert issubclass(llms.OutputValidationError, llms.LLMError)
    for name in llms.__all__:
        assert getattr(llms, name).__doc__, f"{name} needs a docstring"
