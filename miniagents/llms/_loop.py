"""The LLM agent loop: stream one model turn, run the requested tools concurrently, repeat."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, TypeVar

import anyio
import attrs
import httpx

from miniagents import InteractionContext, Message, MessagePromise, MessageWriter, MiniAgents, TextMessage
from miniagents.llms._common import (
    REASONING_ROLE,
    LLMOptions,
    ProviderSpec,
    StreamDecoder,
    ToolCallRecord,
    parse_options,
    resolve_api_key,
    resolve_base_url,
)
from miniagents.llms._exceptions import (
    LLMError,
    LLMTimeoutError,
    MalformedResponseError,
    OutputValidationError,
    ToolRoundsExceededError,
    UsageLimitExceededError,
)
from miniagents.llms._http import (
    make_timeout,
    open_stream,
    request_id_of,
    request_secrets,
    shared_http_client,
    transport_error,
)
from miniagents.llms._limiting import request_limits
from miniagents.llms._output import OUTPUT_TOOL_NAME, OutputJudge, OutputSpec, output_spec
from miniagents.llms._sse import SSEDecoder, SSELineTooLongError
from miniagents.llms._telemetry import NO_TOOL_SPAN, active_tracing, chat_span
from miniagents.llms._tools import Tool, as_tools, tool_result_text
from miniagents.llms._usage import Usage, usage_fields

__all__ = ["run_llm_agent"]

#: After the terminal event, at most this many bytes are read to let the connection be reused.
_DRAIN_LIMIT = 64 * 1024
_DRAIN_SECONDS = 1.0
#: Finish reasons of a turn cut off by the token limit (OpenAI, Anthropic): its tool calls are not run.
_CUT_OFF_REASONS = frozenset({"length", "max_tokens"})

logger = logging.getLogger("miniagents.llms")


class _Turn:
    """The reply message of one model turn, opened (and replied) lazily.

    With *reply_reasoning*, the model's reasoning streams into its own ``TextMessage(role="reasoning")``,
    replied when the first reasoning token arrives and finished when the answer's first token does (or when
    the turn ends), so it comes before the answer in the replies.  Reasoning that resumes after the answer
    began (rare) opens another reasoning message.  *usage_before* is the call's usage before this turn.
    """

    def __init__(
        self,
        ctx: InteractionContext,
        known: Mapping[str, Any],
        *,
        reply_reasoning: bool = False,
        usage_before: Usage | None = None,
    ) -> None:
        self.ctx = ctx
        self.known = dict(known)
        self.writer: MessageWriter | None = None
        #: The finished message, set as soon as the terminal event was decoded.
        self.message: Message | None = None
        #: Judges the structured output of the turn before its message is finished (``output_type=``).
        self.judge: OutputJudge | None = None
        self._tokens: list[str] = []  # kept only for the judge
        self.reply_reasoning = reply_reasoning
        self.usage_before = usage_before if usage_before is not None else Usage()
        self.reasoning_writer: MessageWriter | None = None
        #: Every reasoning message of the turn: failed with the turn when it fails visibly.
        self.reasoning_writers: list[MessageWriter] = []

    def send(self, token: str) -> None:
        """Stream one token of the turn's text (the hot path: one call per token)."""
        writer = self.writer
        if writer is None or self.reasoning_writer is not None:
            writer = self.open()
        if self.judge is not None:
            self._tokens.append(token)
        writer.send(token)

    def text(self) -> str:
        """The text streamed so far (known only when the turn has a judge)."""
        return "".join(self._tokens)

    def open(self) -> MessageWriter:
        self.end_reasoning()
        if self.writer is None:
            promise, self.writer = MessagePromise.open(message_class=TextMessage, **self.known)
            self.ctx.reply(promise)
        return self.writer

    def reason(self, token: str) -> None:
        """Stream one reasoning token (dropped without ``reply_reasoning``: the field keeps the whole text)."""
        if not self.reply_reasoning:
            return
        if self.reasoning_writer is None:
            known = {**self.known, "role": REASONING_ROLE}
            promise, self.reasoning_writer = MessagePromise.open(message_class=TextMessage, **known)
            self.reasoning_writers.append(self.reasoning_writer)
            self.ctx.reply(promise)
        self.reasoning_writer.send(token)

    def end_reasoning(self) -> None:
        if self.reasoning_writer is not None:
            self.reasoning_writer.finish()
            self.reasoning_writer = None

    @property
    def visible(self) -> bool:
        """Whether a message of this turn was replied (a failure then ends it instead of the call)."""
        return self.writer is not None or bool(self.reasoning_writers)

    def fail(self, error: LLMError) -> None:
        for writer in [*self.reasoning_writers, *([self.writer] if self.writer is not None else [])]:
            writer.fail(error)


async def run_llm_agent(
    ctx: InteractionContext, spec: ProviderSpec, agent_name: str, options: Mapping[str, Any]
) -> None:
    """Run one call of an LLM agent (see :func:`miniagents.llms.openai_agent`)."""
    opts = parse_options(agent_name, options)
    tools = as_tools(opts.tools)
    output = output_spec(agent_name, opts)
    if output is not None and output.mode == "tool":
        if any(t.name == OUTPUT_TOOL_NAME for t in tools):
            raise ValueError(
                f"agent {agent_name!r}: a tool is named {OUTPUT_TOOL_NAME!r}, the name of the structured-output "
                "tool (rename it, or use output_mode='native')"
            )
        tools = (*tools, output.tool())
        if opts.tool_choice is None and not _thinks(opts):
            # Forcing the tool is the reliable default; Anthropic refuses a forced tool choice while the model
            # thinks, and then a text answer is asked again (the judge's feedback) instead.
            opts = attrs.evolve(opts, tool_choice="required")
    tools_by_name = {t.name: t for t in tools}
    failed_outputs = 0
    client = opts.http_client if opts.http_client is not None else shared_http_client()
    api_key = resolve_api_key(opts, spec)
    base_url = resolve_base_url(opts, spec)
    conversation: list[Message] = list(await ctx.messages)
    if opts.thinking is not None and spec.name != "anthropic":
        raise LLMError(
            f"agent {agent_name!r}: thinking= is an Anthropic option; for an OpenAI-compatible server pass "
            "its own request field with extra_body= (its reasoning streams either way)",
            provider=spec.name,
        )
    rounds = 0
    usage = Usage()
    while True:
        judge = output.judge() if output is not None else None
        message = await _model_turn(
            ctx,
            spec,
            opts,
            tools,
            conversation,
            client,
            api_key,
            base_url,
            agent_name=agent_name,
            judge=judge,
            usage_before=usage,
        )
        if message is None:  # failed after its tokens became visible: consumers get the error there
            return
        usage = Usage.of(message, total=True)
        calls = [
            ToolCallRecord(id=str(c["id"]), name=str(c["name"]), arguments=str(c["arguments"]))
            for c in message.get("tool_calls") or ()
        ]
        if judge is not None and output is not None and (judge.accepted or judge.issues is not None):
            if judge.issues is not None:
                failed_outputs += 1
                if failed_outputs > output.retries or judge.refused:
                    raise _output_error(output, judge, failed_outputs, spec.name, message)
                # Before the other tools of the turn run: past the limit, nothing more runs.
                _check_usage(opts, agent_name, spec.name, usage, message, "another structured answer")
            feedback = await _output_feedback(judge, calls, tools_by_name, spec.name)
            for result in feedback:
                # The accepted turn is always replied (it holds the output): so is its confirmation, so that
                # the replies stay a complete exchange when they become a later conversation.
                if opts.reply_tool_messages or judge.accepted:
                    ctx.reply(result)
                else:
                    MiniAgents.current()._persist(result)
            if judge.accepted:
                return
            conversation.extend([message, *feedback])
            continue
        if not calls:
            return
        if rounds >= opts.max_tool_rounds:
            raise ToolRoundsExceededError(
                f"agent {agent_name!r}: the model asked for tools again after "
                f"max_tool_rounds={opts.max_tool_rounds} rounds",
                provider=spec.name,
                request_id=message.get("request_id"),
            )
        _check_usage(opts, agent_name, spec.name, usage, message, f"{len(calls)} tool call(s), not run")
        rounds += 1
        results = await _run_tools(calls, tools_by_name, spec.name)
        for result in results:
            if opts.reply_tool_messages:
                ctx.reply(result)
            else:
                MiniAgents.current()._persist(result)
        conversation.extend([message, *results])


def _thinks(opts: LLMOptions) -> bool:
    """Whether the request enables (Anthropic) extended thinking."""
    thinking = opts.thinking
    if thinking is None:
        return False
    return not (isinstance(thinking, Mapping) and thinking.get("type") == "disabled")


def _check_usage(
    opts: LLMOptions, agent_name: str, provider: str, usage: Usage, message: Message, wanted: str
) -> None:
    """Raise :class:`UsageLimitExceededError` when the call's *usage* reached its ``usage_limit``."""
    if opts.usage_limit is None:
        return
    reached = opts.usage_limit.reached(usage)
    if reached is None:
        return
    name, used, limit = reached
    raise UsageLimitExceededError(
        f"agent {agent_name!r} reached its usage limit {name}={limit} ({name} so far: {used}, "
        f"after {usage.requests} request(s), {usage.total_tokens} tokens) while the model asked "
        f"for {wanted}; no further request was sent",
        provider=provider,
        request_id=message.get("request_id"),
        agent=agent_name,
        limit=opts.usage_limit,
        usage=usage,
        limit_name=name,
    )


async def _model_turn(
    ctx: InteractionContext,
    spec: ProviderSpec,
    opts: LLMOptions,
    tools: Sequence[Tool],
    conversation: Sequence[Message],
    client: httpx.AsyncClient,
    api_key: str,
    base_url: str,
    *,
    agent_name: str,
    judge: OutputJudge | None = None,
    usage_before: Usage | None = None,
) -> Message | None:
    """Stream one model response into a replied message; return it, or ``None`` if it failed visibly.

    A failure before any token is visible is raised (the call fails); a failure after tokens were streamed
    fails the message itself (consumers see the tokens, then the error) and ``None`` is returned, so the error
    is reported exactly once.
    """
    url, headers, body = spec.request(opts, conversation, tools, api_key, base_url)
    if judge is not None:
        judge.spec.amend_request("anthropic" if spec.name == "anthropic" else opts.api, body)
    if opts.extra_headers:
        headers.update(opts.extra_headers)
    secrets = request_secrets(url, headers, api_key)
    timeout = make_timeout(client.timeout, connect=opts.connect_timeout, read=opts.read_timeout)
    turn = _Turn(
        ctx,
        {"role": "assistant", "provider": spec.name, "model": opts.model},
        reply_reasoning=opts.reply_reasoning,
        usage_before=usage_before,
    )
    turn.judge = judge
    # OpenTelemetry: a no-op unless the call is traced; adds the traceparent header when it is.
    with chat_span(spec.name, opts, url, headers, conversation) as span:
        try:
            with anyio.move_on_after(opts.timeout if opts.timeout is not None else float("inf")) as deadline:
                await _stream(turn, spec, opts, client, url, headers, body, timeout, secrets)
            # A deadline that fires after the terminal event (while the rest of the body is drained) does not
            # undo the finished message: only an unfinished turn timed out.
            if turn.message is None:
                assert deadline.cancelled_caught
                raise LLMTimeoutError(
                    f"agent {agent_name!r}: the model call took longer than timeout={opts.timeout} s",
                    provider=spec.name,
                    request_id=turn.known.get("request_id"),
                )
        except LLMError as error:
            # The one boundary every error of a model request crosses: a key the server echoed in its error
            # body is redacted here, before the error is raised, traced, stored or logged.
            error.redact(secrets)
            if not turn.visible:
                raise
            span.failed(error)
            turn.fail(error)
            return None
        span.finished(turn.message)
    return turn.message


async def _stream(
    turn: _Turn,
    spec: ProviderSpec,
    opts: LLMOptions,
    client: httpx.AsyncClient,
    url: str,
    headers: dict[str, str],
    body: dict[str, Any],
    timeout: httpx.Timeout,
    secrets: Sequence[str],
) -> None:
    """Stream the response into the turn's message; ``turn.message`` is set once the terminal event is in."""
    limits = request_limits(
        opts.rate_limiter,
        provider=spec.name,
        model=opts.model,
        base_url=resolve_base_url(opts, spec),
        api_key=resolve_api_key(opts, spec),
        body=body,
    )
    async with open_stream(
        client,
        url,
        headers=headers,
        body=body,
        timeout=timeout,
        retry=opts.retry(),
        provider=spec.name,
        secrets=secrets,
        limits=limits,
    ) as response:
        request_id = request_id_of(response.headers)
        if request_id:
            turn.known["request_id"] = request_id
        decoder = spec.decoder(opts, request_id)
        take_reasoning = _reasoning_source(decoder)
        sse = SSEDecoder()
        # Without a content-type the body is parsed as SSE, but one that is plainly something else (an HTML
        # page, JSON) or that never produces an event is reported as malformed, not as a cut-off stream.
        sniff = _Sniffer(response) if "content-type" not in response.headers else None
        chunks = response.aiter_bytes()
        failure: LLMError | None = None
        try:
            async for chunk in chunks:
                if sniff is not None:
                    sniff.feed(chunk, spec.name)
                for event in sse.feed(chunk):
                    sniff = None
                    tokens = _decode(spec.name, request_id, decoder.feed, event)
                    _emit(turn, tokens, take_reasoning)
                    if decoder.finished:
                        break
                if decoder.finished:
                    break
            else:
                for event in sse.close():
                    sniff = None
                    _emit(turn, _decode(spec.name, request_id, decoder.feed, event), take_reasoning)
        except httpx.HTTPError as exc:  # transport errors, timeouts, undecodable content-encoding
            failure = transport_error(
                exc, provider=spec.name, streaming=True, request_id=request_id, secrets=secrets
            )
        except SSELineTooLongError as exc:
            failure = MalformedResponseError(str(exc), provider=spec.name, request_id=request_id)
        if failure is not None:
            # Raised here, not in the except block: the httpx exception (its request holds the key) must not
            # become the __context__ of the error.
            raise failure
        if sniff is not None and not decoder.finished:
            raise sniff.no_events(spec.name)
        fields, calls = _decode(spec.name, request_id, decoder.result)
        fields.update(usage_fields(fields.get("usage"), spec.name, turn.usage_before))
        # The message is finished before the rest of the body is drained: consumers never wait for that.
        message = turn.message = _finish_turn(turn, fields, calls, opts, spec.name)
        if limits is not None:
            limits.settle_usage(message.get("usage"))
        if decoder.finished:
            await _drain(chunks)


class _Sniffer:
    """Judges the start of a 2xx body that came without a content-type, until its first event."""

    #: How much of the body start is kept for the error message.
    SNIPPET = 500

    def __init__(self, response: httpx.Response) -> None:
        self.status = response.status_code
        self.request_id = request_id_of(response.headers)
        self.head = b""
        self.judged = False

    def feed(self, chunk: bytes, provider: str) -> None:
        """Keep the start of the body; raise as soon as it plainly is not an event stream."""
        if len(self.head) < self.SNIPPET:
            self.head += chunk[: self.SNIPPET - len(self.head)]
        if self.judged:
            return
        start = self.head.lstrip()
        if not start:
            return
        self.judged = True
        if start[:1] in (b"<", b"{", b"["):
            kind = "an HTML/XML page" if start[:1] == b"<" else "JSON"
            raise self._error(provider, f"sent {kind}, not an event stream")

    def no_events(self, provider: str) -> MalformedResponseError:
        """The error for a body that ended without a single event."""
        return self._error(provider, "sent no event-stream event")

    def _error(self, provider: str, what: str) -> MalformedResponseError:
        snippet = self.head.decode("utf-8", errors="replace")
        return MalformedResponseError(
            f"the server answered HTTP {self.status} without a content-type and {what}: {snippet!r}",
            status=self.status,
            request_id=self.request_id,
            provider=provider,
            body=snippet,
        )


def _finish_turn(
    turn: _Turn, fields: dict[str, Any], calls: list[ToolCallRecord], opts: LLMOptions, provider: str
) -> Message:
    """Resolve the turn's message with its final fields (tool calls of a cut-off turn kept apart)."""
    turn.end_reasoning()
    incomplete = fields.get("finish_reason") in _CUT_OFF_REASONS
    if calls and incomplete:
        # The token limit cut the turn while the model was writing tool calls: their arguments may be
        # partial JSON, so they are not run.  They are kept apart from ``tool_calls`` so that the message is
        # still a valid assistant turn in the next call's history.
        fields["incomplete_tool_calls"] = [c.as_field() for c in calls]
        logger.warning(
            "%s turn cut off by the token limit (finish_reason=%r) while calling tools; the %d tool call(s) "
            "were not run (raise max_tokens)",
            provider,
            fields.get("finish_reason"),
            len(calls),
        )
        calls = []
    if calls:
        fields["tool_calls"] = [c.as_field() for c in calls]
    if turn.judge is not None:
        turn.judge(fields, calls, turn.text())  # adds the ``output`` field of a valid structured answer
    if turn.writer is None and calls and not opts.reply_tool_messages and "output" not in fields:
        message: Message = TextMessage(content="", **{**turn.known, **fields})
        MiniAgents.current()._persist(message)
        return message
    return turn.open().finish(**fields)


_T = TypeVar("_T")


def _reasoning_source(decoder: StreamDecoder) -> Callable[[], list[str]] | None:
    """The decoder's ``take_reasoning`` (see :class:`~miniagents.llms._common.ReasoningDecoder`), if it has one."""
    take = getattr(decoder, "take_reasoning", None)
    return take if callable(take) else None


def _emit(turn: _Turn, tokens: list[str], take_reasoning: Callable[[], list[str]] | None) -> None:
    """Stream one event's tokens: its reasoning first, then its text."""
    if take_reasoning is not None:
        reasoning = take_reasoning()
        if reasoning:
            for token in reasoning:
                turn.reason(token)
    if tokens:
        send = turn.send
        for token in tokens:
            send(token)


def _decode(provider: str, request_id: str | None, step: Callable[..., _T], *args: Any) -> _T:
    """Run one decoding step; an unexpected exception (a payload of the wrong shape) becomes an :class:`LLMError`.

    The decoders type-check what they read and raise :class:`MalformedResponseError` themselves; this is the
    safety net, so that a surprise from a server never escapes untyped or leaves a streamed message unfinished.
    """
    try:
        return step(*args)
    except LLMError:
        raise
    except Exception as exc:
        detail = f"{type(exc).__name__}: {exc}"[:300]
    raise MalformedResponseError(
        f"malformed stream event ({detail})", provider=provider, request_id=request_id
    )


async def _drain(chunks: AsyncIterator[bytes]) -> None:
    """Read what follows the terminal event (normally just the end of the body) so the connection is reused.

    Bounded in size and time: a server that keeps the body open after the terminal event is simply cut off.
    """
    drained = 0
    with anyio.move_on_after(_DRAIN_SECONDS):
        try:
            async for chunk in chunks:
                drained += len(chunk)
                if drained > _DRAIN_LIMIT:
                    break
        except httpx.HTTPError:
            pass


async def _run_tools(
    calls: Sequence[ToolCallRecord], tools: Mapping[str, Tool], provider: str
) -> list[Message]:
    """Run the calls of one turn concurrently; results keep the order of the calls."""
    results: list[Message | None] = [None] * len(calls)
    tracing = active_tracing.get()  # read once: None (the usual case) costs nothing more per tool

    async def run_one(index: int, call: ToolCallRecord) -> None:
        is_error = False
        tool = tools.get(call.name)
        # OpenTelemetry: an execute_tool span, except for agent tools (their call has its own span).
        span = (
            NO_TOOL_SPAN
            if tracing is None or (tool is not None and tool.calls_agent)
            else tracing.tool_span(call.name, call.id, tool.description if tool else None, call.arguments)
        )
        with span:
            try:
                if tool is None:
                    raise LookupError(
                        f"unknown tool {call.name!r}; available: {', '.join(sorted(tools)) or 'none'}"
                    )
                try:
                    arguments = json.loads(call.arguments) if call.arguments.strip() else {}
                except ValueError as exc:
                    raise ValueError(f"the arguments are not valid JSON: {exc}") from None
                if not isinstance(arguments, dict):
                    raise TypeError("the arguments must be a JSON object")
                text = tool_result_text(await tool.handler(arguments))
            except Exception as exc:
                span.failed(exc)
                text = f"{type(exc).__name__}: {exc}"
                is_error = True
            else:
                span.finished(text)
        results[index] = TextMessage(
            content=text,
            role="tool",
            tool_call_id=call.id,
            tool_name=call.name,
            is_error=is_error,
            provider=provider,
        )

    async with anyio.create_task_group() as tg:
        for index, call in enumerate(calls):
            tg.start_soon(run_one, index, call)
    return [r for r in results if r is not None]


async def _output_feedback(
    judge: OutputJudge, calls: Sequence[ToolCallRecord], tools: Mapping[str, Tool], provider: str
) -> list[Message]:
    """The messages that answer a judged turn: results of its tool calls (in their order), or a user turn.

    An accepted ``final_result`` call gets a short confirmation and the other calls of that turn are not run
    (their results say so), so that the turn stays a complete exchange in a later conversation.  An invalid
    ``final_result`` call gets the validation errors as its error result while the other calls run as usual;
    an invalid answer without a ``final_result`` call (text, or native output) gets them as a user turn.
    """

    def result(call: ToolCallRecord, text: str, *, is_error: bool) -> Message:
        return TextMessage(
            content=text,
            role="tool",
            tool_call_id=call.id,
            tool_name=call.name,
            is_error=is_error,
            provider=provider,
        )

    if judge.accepted:
        return [
            result(call, "The final result was accepted.", is_error=False)
            if call.id == judge.call_id
            else result(call, "Not run: the final result was given in the same turn.", is_error=False)
            for call in calls
        ]
    if judge.call_id is not None:
        others = [c for c in calls if c.id != judge.call_id]
        ran = iter(await _run_tools(others, tools, provider) if others else [])
        return [
            result(call, judge.feedback(), is_error=True) if call.id == judge.call_id else next(ran)
            for call in calls
        ]
    return [TextMessage(content=judge.feedback(), role="user", provider=provider)]


def _output_error(
    output: OutputSpec, judge: OutputJudge, attempts: int, provider: str, message: Message
) -> OutputValidationError:
    issues = judge.issues or ()
    listed = "; ".join(str(i) for i in issues)
    return OutputValidationError(
        f"agent {output.agent!r}: the model's answer is not a valid {output.described} after {attempts} "
        f"attempt{'s' if attempts > 1 else ''} (output_retries={output.retries}): {listed}",
        agent=output.agent,
        issues=tuple((i.path, i.message) for i in issues),
        raw=judge.raw,
        attempts=attempts,
        provider=provider,
        request_id=message.get("request_id"),
    )
