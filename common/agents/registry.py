"""Agents from `agents.yaml` and the routing rule shared by gateway and workers."""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path

import yaml
from pydantic import BaseModel, Field, model_validator

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class AgentRules(BaseModel):
    keywords: list[str] = Field(default_factory=list)
    integrations: list[str] = Field(default_factory=list)


class ToolServer(BaseModel):
    """One MCP server: streamable HTTP (`url`, `headers` with `${ENV}` references) or stdio (`command`)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")
    url: str = ""
    headers: dict[str, str] = Field(default_factory=dict)
    command: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_transport(self) -> ToolServer:
        if bool(self.url) == bool(self.command):
            raise ValueError(f"tool server {self.name!r} needs exactly one of `url` or `command`")
        return self

    def resolved_headers(self) -> dict[str, str]:
        """The headers with `${NAME}` replaced by the worker's environment (a missing variable is an error)."""

        def value(match: re.Match[str]) -> str:
            if match.group(1) not in os.environ:
                raise KeyError(f"environment variable {match.group(1)} (a header of tool server {self.name!r})")
            return os.environ[match.group(1)]

        return {k: _ENV.sub(value, v) for k, v in self.headers.items()}


class AgentTools(BaseModel):
    """An agent's MCP tools, each named `server.tool`: `allow` narrows them (default all of the servers'),
    `approval` needs a person's yes, `idempotent` may run again after a crash left them in flight."""

    servers: list[ToolServer] = Field(min_length=1)
    allow: list[str] | None = None
    approval: list[str] = Field(default_factory=list)
    idempotent: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _known_servers(self) -> AgentTools:
        names = [s.name for s in self.servers]
        if len(set(names)) != len(names):
            raise ValueError("tool server names must be unique")
        for tool in [*(self.allow or []), *self.approval, *self.idempotent]:
            server, dot, rest = tool.partition(".")
            if not dot or not rest or server not in names:
                raise ValueError(f"tool {tool!r} must be named `server.tool` with a server of this agent")
        return self

    def allows(self, qualified: str) -> bool:
        return self.allow is None or qualified in self.allow


class Agent(BaseModel):
    id: str
    description: str = ""
    model: str = ""
    system_prompt: str = ""
    feature: str = "default"
    default: bool = False
    rules: AgentRules = Field(default_factory=AgentRules)
    tools: AgentTools | None = None
    max_steps: int = Field(default=8, ge=1, le=100)


class ModelPrice(BaseModel):
    """An operator's price for a model, used instead of litellm's cost map (USD per million tokens)."""

    input_usd_per_million_tokens: float = Field(ge=0)
    output_usd_per_million_tokens: float = Field(ge=0)


class AgentRegistry(BaseModel):
    agents: list[Agent]
    prices: dict[str, ModelPrice] = Field(default_factory=dict)  # by model name, as agents and LLM_MODEL name it

    def get(self, agent_id: str) -> Agent | None:
        return next((a for a in self.agents if a.id == agent_id), None)

    @property
    def default(self) -> Agent:
        return next((a for a in self.agents if a.default), self.agents[0])

    def route(self, content: str, integration_type: str, agent_id: str | None = None) -> Agent:
        """Explicit agent, else the first rule match, else the default agent."""
        if agent_id:
            agent = self.get(agent_id)
            if agent is None:
                raise KeyError(agent_id)
            return agent
        words = content.lower()
        for agent in self.agents:
            if integration_type in agent.rules.integrations:
                return agent
            if any(k.lower() in words for k in agent.rules.keywords):
                return agent
        return self.default


@lru_cache(maxsize=4)
def load_agents(path: Path | None = None) -> AgentRegistry:
    text = path.read_text() if path else Path(__file__).with_name("agents.yaml").read_text()
    registry = AgentRegistry.model_validate(yaml.safe_load(text))
    if not registry.agents:
        raise ValueError("agents file defines no agents")
    return registry
