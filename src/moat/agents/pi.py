"""The pi coding agent (``moat pi``): Anthropic or OpenAI as its backend, whichever grant it has."""

from __future__ import annotations

from collections.abc import Mapping

from moat.agents.base import Agent, pretty_json
from moat.agents.model import CONTEXT_ARGUMENT, AgentOptions, AgentSetup
from moat.config.schema import MoatConfig
from moat.errors import UsageError

PROVIDERS = {"anthropic": "anthropic", "openai": "openai"}  # pi's --provider → moat's grant


class Pi(Agent):
    def preferred_grants(self, options: AgentOptions, config: MoatConfig) -> tuple[str, ...]:
        chosen = str(options.flags.get("provider") or config.pi.provider)
        return (PROVIDERS[chosen],) if chosen in PROVIDERS else self.grants

    def setup(self, options: AgentOptions, config: MoatConfig, grant: str | None,
              grant_env: Mapping[str, str]) -> AgentSetup:
        provider = str(options.flags.get("provider") or config.pi.provider or grant or "")
        if provider not in PROVIDERS:
            raise UsageError(f"pi's provider must be one of {', '.join(PROVIDERS)}, not '{provider[:40]}'",
                             hint="Set pi.provider in moat.yaml or pass --provider anthropic|openai.")
        if grant is not None and PROVIDERS[provider] != grant:
            raise UsageError(f"pi is set to use {provider}, but the run's credential is {grant}",
                             hint=f"Store one with `moat grant {PROVIDERS[provider]}`, or choose --provider {grant}.")
        command = ["pi"]
        model = str(options.flags.get("model") or config.pi.model)
        if model:  # pi takes --provider only with --model; without, it uses the backend whose key it sees
            command += ["--provider", provider, "--model", model]
        # moat's context file (where the run mounts it), read by pi as part of its system prompt.
        command += ["--append-system-prompt", CONTEXT_ARGUMENT]
        # After '--': a prompt that starts with '-' is not an option (pi still reads a leading '@' as a file).
        if options.prompt is not None:
            command += ["-p", "--", options.prompt]
        elif options.initial:
            command += ["--", options.initial]
        settings = {"defaultProjectTrust": "never", "enableInstallTelemetry": False, "enableAnalytics": False,
                    "quietStartup": True}
        return self.base(grant, tuple(command), options, block=config.pi.model_dump(include={"provider", "model"}),
                         env={"PI_OFFLINE": "1"},
                         home_files={".pi/agent/settings.json": pretty_json(settings)})


PI = Pi("pi", "pi coding agent", "pi-cli", ("anthropic", "openai"),
        "`moat grant anthropic` or `moat grant openai` (an API key)")
