"""The public LLM agents: :func:`openai_agent` and :func:`anthropic_agent`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from miniagents import InteractionContext, MiniAgent
from miniagents.llms._anthropic import AnthropicSpec
from miniagents.llms._common import check_options
from miniagents.llms._loop import run_llm_agent
from miniagents.llms._openai import OpenAISpec
from miniagents.llms._openai_responses import ResponsesSpec

__all__ = ["anthropic_agent", "openai_agent"]

_OPTIONS_DOC = """
    Options (keyword arguments of ``inquire()`` / ``initiate_call()`` / ``fork()``; an unknown option or a
    value of the wrong type raises ``TypeError`` / ``ValueError`` right there, naming the agent alias and
    suggesting the closest option name for a typo; a missing ``model`` fails the call when it starts):
        model: the model name (required).
        system: the system prompt.
        temperature, top_p: sampling parameters (sent only when given).
        max_tokens: the completion limit (OpenAI ``max_completion_tokens``; Anthropic ``max_tokens``,
            default 4096).  For servers that only know OpenAI's older ``max_tokens``, use
            ``extra_body={"max_tokens": n}``.
        stop: a stop sequence or a list of them.
        tools: miniagents, typed ``async def`` functions or :class:`~miniagents.llms.Tool` objects.
        tool_choice: ``"auto"``, ``"none"``, ``"required"``/``"any"``, a tool name, or the provider's own
            object.
        parallel_tool_calls: allow several tool calls per turn (sent only when given).
        max_tool_rounds: how many rounds of tool calls to run (default 10); a model that asks for more
            raises :class:`~miniagents.llms.ToolRoundsExceededError`.
        reply_tool_messages: reply the tool-call turns and tool results too (default ``True``); when
            ``False`` only text turns are replied (hidden ones still go to persistence).
        api_key: the API key (default: the provider's environment variable).
        base_url: the API base URL (default: the provider's environment variable, then the official URL).  A
            query it holds (Azure's ``?api-version=``) is kept after the endpoint path.
        http_client: an ``httpx.AsyncClient`` to use instead of the context's pooled one.
        timeout: the whole-call limit in seconds for each model request, retries and streaming included; the
            error keeps the request id once the response started.  A message is finished at the model's
            terminal event (``[DONE]`` / ``message_stop``): a limit that passes later, while the rest of the
            body is drained for connection reuse, cuts the drain, not the turn.
        connect_timeout, read_timeout: override the client's connect / between-chunks read timeouts.
        max_retries: retries of a failed request before its response starts (default 2).
        retry_policy: a :class:`~miniagents.llms.RetryPolicy` (overrides ``max_retries``).
        extra_body: more JSON fields for the request body (override the generated ones).
        extra_headers: more request headers.
        anthropic_version: the ``anthropic-version`` header (Anthropic only; default ``2023-06-01``).
        rate_limiter: a :class:`~miniagents.RateLimiter` for this agent's requests (shared by every call of a
            fork that holds it); the context's ``MiniAgents(rate_limiter=)`` applies too: the request waits in
            this one, then in the context's (which is exact at the moment the request is sent; this one counts
            the request from its own grant, and gets it back if the request is cancelled while waiting in the
            context's).  Use the same two limiters in the same roles everywhere: a limiter that is the
            agent's limiter in one place and the context's in another can deadlock two requests that each
            hold one while waiting for the other when both limit concurrency.  Every attempt (retries included) reserves the prompt estimate
            (JSON body bytes / 4) plus ``max_tokens``, settles to the reported ``usage``, and a 429/503/529 with
            ``retry-after`` pauses every waiter on its key.  The wait counts toward ``timeout``.
        api: ``openai_agent`` only: ``"chat_completions"`` (the default, ``POST {base_url}/chat/completions``) or
            ``"responses"`` (the OpenAI Responses API, ``POST {base_url}/responses``, for models only served
            there).  With ``"responses"`` the whole conversation is sent every turn (stateless: nothing depends
            on ``store`` or ``previous_response_id``); ``system`` is sent as ``instructions``, ``max_tokens`` as
            ``max_output_tokens``, tools as function tools (``strict: false``), tool calls and results as
            ``function_call`` / ``function_call_output`` items; ``stop`` is not supported (``ValueError``).
            Reasoning settings go in ``extra_body``, e.g. ``extra_body={"reasoning": {"effort": "low",
            "summary": "auto"}}``; the streamed reasoning summary is kept in the reply's ``reasoning`` field and
            the reasoning items in ``reasoning_items`` (those with ``encrypted_content``, asked for with
            ``extra_body={"include": ["reasoning.encrypted_content"]}``, are sent back in later turns).  An
            incomplete response reports ``finish_reason="length"`` (``max_output_tokens``) or the reason given.
        output_type: structured output: an attrs class, a dataclass, a ``TypedDict`` or the JSON-schema dict
            of an object.  Its JSON schema (docstring summary as ``description``, ``Attributes:`` docs as property
            descriptions, defaults, ``Literal``/``Enum`` values as ``enum``, fields without a default
            ``required``) is given to the model and the answer is validated against the type (the coercion
            rules of tool arguments).  The accepted turn has the value, as JSON data, in its ``output`` field;
            ``await miniagents.llms.output_of(replies, MyType)`` returns the instance.
        output_mode: ``"tool"`` (default): the model answers by calling a ``final_result`` tool whose
            parameters are the schema (``tool_choice`` defaults to ``"required"``; the agent's other tools stay
            available; an accepted call gets a confirmation result, other calls of that turn are not run).
            ``"native"``: the provider's structured output: OpenAI ``response_format`` ``json_schema`` with
            ``strict: true`` (the schema made strict: ``additionalProperties: false``, every property required,
            optional ones nullable; ``strict: false`` for schemas that cannot be strict, e.g. a free-form
            ``dict``), Anthropic ``output_config.format`` ``json_schema``; the answer is the turn's JSON text.
        output_retries: how many invalid answers are sent back to the model with the validation errors, as the
            error result of its ``final_result`` call or as a user turn, before
            :class:`~miniagents.llms.OutputValidationError` (naming the agent and the field paths, keeping the
            last raw answer) is raised (default 1).
        cache_system, cache_tools: Anthropic prompt caching: ``True`` or ``{"type": "ephemeral", "ttl": "1h"}``
            (``ttl`` ``"5m"`` or ``"1h"``) puts a ``cache_control`` breakpoint on the last system block (the
            system is then sent as a list of text blocks) / on the last tool.  A message field
            ``cache_control=`` with the same values puts one on the last content block that message adds (a
            message that adds none raises :class:`~miniagents.llms.LLMError`).  More than 4 breakpoints in a
            request, or a ``1h`` one after a ``5m`` one (in the order tools, system, messages), raise
            :class:`~miniagents.llms.LLMError` naming them, before anything is sent.  OpenAI caches prompt
            prefixes automatically and ignores both options and the field.
        thinking: Anthropic extended thinking: a budget of thinking tokens (sent as ``{"type": "enabled",
            "budget_tokens": n}``; the API wants at least 1024) or the API's own ``thinking`` object.  Without
            ``max_tokens`` the request then asks for the budget plus 4096.  ``openai_agent`` raises
            :class:`~miniagents.llms.LLMError` for it: OpenAI-compatible servers that reason stream their
            ``reasoning_content`` / ``reasoning`` anyway (their own switches go in ``extra_body``).
        reply_reasoning: reply each turn's reasoning as its own streamed ``TextMessage(role="reasoning")``
            before the answer (default ``False``: the replies stay the answers, as without reasoning, and the
            whole reasoning is in the assistant message's ``reasoning`` field either way).  The reasoning of
            a tool-call turn is replied too, also with ``reply_tool_messages=False`` (it streams before the
            turn is known to call tools).  Reasoning messages in a conversation given back to an LLM agent
            are left out of the request.
        usage_limit: a :class:`~miniagents.llms.UsageLimit` (or an int: total tokens) for the whole call:
            when the model asks for another round once the call's usage has reached a limit, the tools are not
            run, nothing more is sent and :class:`~miniagents.llms.UsageLimitExceededError` is raised (naming
            the agent, the limit and the usage so far); what was replied stays replied.

    Replies: each model turn is one streamed message (``TextMessage``) whose tokens arrive as they are
    generated, with fields ``role="assistant"``, ``provider``, ``model`` (as reported by the server),
    ``finish_reason``, ``usage`` (as reported), ``request_id``, ``response_id`` and, for tool-call turns,
    ``tool_calls`` (``{"id", "name", "arguments"}`` with ``arguments`` the JSON text).  Tool results are
    ``TextMessage(role="tool", tool_call_id=..., tool_name=..., is_error=...)``.  Every assistant message also
    has ``normalized_usage`` (this turn's :class:`~miniagents.llms.Usage` as a dict: ``input_tokens``,
    ``output_tokens``, ``total_tokens``, ``cache_read_tokens``, ``cache_write_tokens``, ``reasoning_tokens``,
    ``requests``) and ``total_usage`` (the same for the whole call up to and including this turn, so the call's
    last assistant message has the call's total; tool results carry none; ``Usage.of(message, total=True)``
    reads it).  A turn that reasoned has
    ``reasoning`` (the whole text) and, from Anthropic, ``thinking_blocks`` (the thinking and
    redacted_thinking blocks as the API sent them, sent back verbatim when the conversation continues).

    Tool arguments are validated against the declared parameter types before a tool function runs (only
    lossless coercions: ``"2"`` -> ``2`` for an ``int``, ``2.0`` -> ``2``, ``"true"`` -> ``True``; ``2.5`` for
    an ``int`` is an error); a wrong type, a missing required or an unknown argument is sent back to the model as
    the error result (``is_error=True``) naming the tool and the argument path (``b: expected int, got "x"``),
    without calling the function, so the model can correct its call.

    A turn cut off by the token limit (``finish_reason`` ``"length"`` / ``"max_tokens"``) while the model was
    writing tool calls is not an error, like a cut-off text answer: its calls (whose arguments may be partial
    JSON) are not run, the call ends with that turn, and they are kept in ``incomplete_tool_calls`` instead of
    ``tool_calls`` (so the message stays a valid turn of a later conversation).  Raise ``max_tokens`` and ask
    again.

    Input: the call's messages form the conversation.  Messages with ``role="assistant"`` (what LLM agents
    reply) are assistant turns, ``role="tool"`` messages are tool results, ``role="system"`` /
    ``"developer"`` messages are system instructions; every other message is a user turn.  User turns are sent
    as given, empty ones too: ``inquire("")`` sends an empty user turn to OpenAI (which accepts it), while
    Anthropic rejects text that is empty or only whitespace, so there such a message is left out only when it
    is merged into a user turn that has other text, and a user turn with no text at all (``inquire("")``)
    raises :class:`~miniagents.llms.LLMError` naming the agent and the input message, before anything is sent.
    A call with no input message at all sends no user turn (Anthropic: a placeholder one).  Empty assistant
    texts are sent to OpenAI as ``""`` and left out for Anthropic (a tool-calls-only turn keeps its calls).

    Images and documents: a user message's ``parts`` field, a tuple of ``str`` (text),
    :class:`~miniagents.llms.ImagePart` and :class:`~miniagents.llms.DocumentPart` (see
    :func:`~miniagents.llms.user_message`), is sent after its content, in order: OpenAI gets ``text`` /
    ``image_url`` / ``file`` content parts (bytes as ``data:`` URLs; a plain-text document as a text part),
    Anthropic ``text`` / ``image`` / ``document`` blocks (blank text parts left out).  A part given as an input
    message is a user turn of that part.  A part the provider cannot take (OpenAI: a document by URL), parts on
    a message that is not a user turn, or a ``parts`` item of another type raise
    :class:`~miniagents.llms.LLMError` naming the agent, the input message and the part, before anything is
    sent.

    Errors: :class:`~miniagents.llms.LLMError` subclasses.  Connection errors, timeouts and 408/409/429/5xx
    responses are retried with exponential backoff and jitter (``retry-after-ms`` / ``retry-after`` /
    ``x-should-retry`` honoured) until the response starts; never afterwards.  A failure after tokens were
    streamed ends that message with the error, after its tokens; a stream that ends without its terminal
    event raises :class:`~miniagents.llms.TruncatedStreamError`; a 2xx response that is not an event stream, or
    an event of the wrong shape, raises :class:`~miniagents.llms.MalformedResponseError`.  An API key or
    header value with non-ASCII characters raises :class:`~miniagents.llms.LLMError` before anything is sent
    (naming the header, never the value); a key or secret header value that the server echoes in an error body
    is replaced by ``<redacted>`` in the error (its text, ``body`` and pickles, hence records and spans too).  A
    2xx body without a content-type that is HTML or JSON, or holds no event at all, raises
    :class:`~miniagents.llms.MalformedResponseError` with a snippet; so does an event-stream line longer than
    16 MiB.  Cancelling the call closes the HTTP stream.
"""


async def _openai(ctx: InteractionContext, **options: Any) -> None:
    alias = ctx.agent.alias
    spec = ResponsesSpec(agent=alias) if options.get("api") == "responses" else OpenAISpec(agent=alias)
    await run_llm_agent(ctx, spec, ctx.agent.alias, options)


def _check_anthropic_options(agent: str, options: Mapping[str, Any]) -> None:
    """:func:`check_options`, and ``api`` is refused: it chooses between OpenAI's APIs."""
    check_options(agent, options)
    if "api" in options:
        raise ValueError(
            f"agent {agent!r}: the api option is for openai_agent (Chat Completions or Responses); "
            f"Anthropic has one Messages API, got api={options['api']!r}"
        )


async def _anthropic(ctx: InteractionContext, **options: Any) -> None:
    await run_llm_agent(ctx, AnthropicSpec(agent=ctx.agent.alias), ctx.agent.alias, options)


_openai.__doc__ = (
    "Chat with an OpenAI Chat Completions model, or any OpenAI-compatible server (llama.cpp, Ollama, vLLM, "
    'LM Studio) through ``base_url``, streaming tokens as they arrive; with ``api="responses"`` it uses the '
    "OpenAI Responses API instead.\n" + _OPTIONS_DOC
)
_anthropic.__doc__ = (
    "Chat with an Anthropic Messages model, streaming tokens as they arrive.  System prompts go to the "
    "top-level ``system``; consecutive same-role turns are merged and the conversation always starts with a "
    "user turn.\n" + _OPTIONS_DOC
)

#: The OpenAI Chat Completions agent (also for OpenAI-compatible servers); see the options in its description.
openai_agent = MiniAgent(
    _openai,
    alias="openai_agent",
    description="Answers with an OpenAI (or OpenAI-compatible) chat model.",
    kwargs_validator=check_options,
)

#: The Anthropic Messages agent; see the options in its description.
anthropic_agent = MiniAgent(
    _anthropic,
    alias="anthropic_agent",
    description="Answers with an Anthropic Claude model.",
    kwargs_validator=_check_anthropic_options,
)
