"""LLM agents over the providers' streaming REST APIs (``httpx`` + SSE, no vendor SDKs).

* :data:`openai_agent` — OpenAI Chat Completions and OpenAI-compatible servers (``base_url=``); the OpenAI
  Responses API with ``api="responses"``.
* :data:`anthropic_agent` — Anthropic Messages.

Both are miniagents: ``openai_agent.inquire(history, model="gpt-4o-mini", system="...")`` replies a streamed
message per model turn; ``openai_agent.fork(model=..., system=...)`` makes configured variants.  Failures raise
:class:`LLMError` subclasses.  One pooled ``httpx.AsyncClient`` is shared per ``MiniAgents`` context and closed
when it exits.  :class:`ImagePart`, :class:`DocumentPart` and :func:`user_message` put images and documents in
user turns.
when it exits.  With ``reply_reasoning=True`` a turn's reasoning (Anthropic extended thinking, the
``reasoning_content`` of OpenAI-compatible servers) streams as its own message before the answer; every
assistant message carries its :class:`Usage` in a provider-independent shape, and ``usage_limit=``
(:class:`UsageLimit`) stops a runaway tool loop.
"""

import httpx

from miniagents import share_by_reference
from miniagents._publish import publish
from miniagents.llms._agents import anthropic_agent, openai_agent
from miniagents.llms._exceptions import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    ContextLengthError,
    LLMConnectionError,
    LLMError,
    LLMTimeoutError,
    MalformedResponseError,
    NotFoundError,
    OutputValidationError,
    OverloadedError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    ToolRoundsExceededError,
    TruncatedStreamError,
    UsageLimitExceededError,
)
from miniagents.llms._output import output_of
from miniagents.llms._parts import DocumentPart, ImagePart, user_message
from miniagents.llms._request_info import LLMRequestInfo, api_key_fingerprint
from miniagents.llms._retry import RetryPolicy
from miniagents.llms._tools import Tool
from miniagents.llms._usage import Usage, UsageLimit

# Passed in agent kwargs as they are: a pooled client is made to be shared by concurrent tasks, and the
# policy and tool descriptions are frozen attrs classes.
share_by_reference(httpx.AsyncClient)
share_by_reference(RetryPolicy)
share_by_reference(Tool)
share_by_reference(UsageLimit)

__all__ = [
    "APIStatusError",
    "AuthenticationError",
    "BadRequestError",
    "ContextLengthError",
    "DocumentPart",
    "ImagePart",
    "LLMConnectionError",
    "LLMError",
    "LLMRequestInfo",
    "LLMTimeoutError",
    "MalformedResponseError",
    "NotFoundError",
    "OutputValidationError",
    "OverloadedError",
    "PermissionDeniedError",
    "RateLimitError",
    "RetryPolicy",
    "ServerError",
    "Tool",
    "ToolRoundsExceededError",
    "TruncatedStreamError",
    "Usage",
    "UsageLimit",
    "UsageLimitExceededError",
    "anthropic_agent",
    "api_key_fingerprint",
    "openai_agent",
    "output_of",
    "user_message",
]

publish(globals())  # the public names report this module (see miniagents._publish)
