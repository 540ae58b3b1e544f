"""What every LLM example shares: the `--provider`, `--model` and `--max-tokens` options and the LLM agent.

`--provider local` (the default when neither OPENAI_API_KEY nor ANTHROPIC_API_KEY is set) runs the embedded
Gemma 3 270M model on a local server that starts on first use and stops with the MiniAgents context; it needs
no API key and no network.  Its text is not coherent (it is a tiny base model), but it streams real tokens and
makes real tool calls, so every mechanism of the examples is exercised for real.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from miniagents import MiniAgent
from miniagents.llms import anthropic_agent, openai_agent
from miniagents.llms.local import LOCAL_MODEL, local_agent

PROVIDERS = ("local", "openai", "anthropic")
DEFAULT_MODELS = {"local": LOCAL_MODEL, "openai": "gpt-4o-mini", "anthropic": "claude-3-5-haiku-latest"}
# The local model makes ~40-80 tokens/s on 2 CPU cores: keep its answers short.
DEFAULT_MAX_TOKENS = {"local": 48, "openai": 1024, "anthropic": 1024}


def default_provider() -> str:
    """`openai` or `anthropic` when its API key is set, else `local`."""
    if os.environ.get("OPENAI_API_KEY"):
        return "openai"
    if os.environ.get("ANTHROPIC_API_KEY"):
        return "anthropic"
    return "local"


def add_provider_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `--provider`, `--model` and `--max-tokens` to *parser*."""
    group = parser.add_argument_group("LLM provider")
    group.add_argument(
        "--provider",
        choices=PROVIDERS,
        default=default_provider(),
        help="where the model runs (default: openai/anthropic when its API key is set, else local)",
    )
    group.add_argument("--model", help=f"the model name (defaults: {DEFAULT_MODELS})")
    group.add_argument("--max-tokens", type=int, help=f"tokens per answer (defaults: {DEFAULT_MAX_TOKENS})")


def llm_agent(
    args: argparse.Namespace, *, alias: str, tool_calling: bool = False, **options: Any
) -> MiniAgent:
    """Return the LLM agent of the chosen provider as a fork named *alias*, with *options* as defaults.

    *options* are those of `openai_agent` (`system`, `tools`, `tool_choice`, ...).  `tool_calling` is kept for
    the callers' sake and changes nothing any more: the one local server handles chat and tool calls alike.
    """
    provider: str = args.provider
    options.setdefault("max_tokens", args.max_tokens or DEFAULT_MAX_TOKENS[provider])
    if provider == "local":
        if args.model and args.model != LOCAL_MODEL:
            print(f"note: the local provider serves only {LOCAL_MODEL}; ignoring --model", file=sys.stderr)
        return local_agent.fork(alias=alias, **options)
    base = openai_agent if provider == "openai" else anthropic_agent
    return base.fork(alias=alias, model=args.model or DEFAULT_MODELS[provider], **options)
