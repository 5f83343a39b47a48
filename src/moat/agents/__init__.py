"""The coding agents moat runs by name (``moat claude`` …): each one's CLI, credential and set-up."""

from __future__ import annotations

from moat.agents.base import Agent
from moat.agents.claude import CLAUDE
from moat.agents.codex import CODEX
from moat.agents.copilot import COPILOT
from moat.agents.gemini import GEMINI
from moat.agents.pi import PI

AGENTS: dict[str, Agent] = {a.name: a for a in (CLAUDE, CODEX, GEMINI, COPILOT, PI)}
