"""Agents from `agents.yaml` and the routing rule shared by gateway and workers."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel, Field


class AgentRules(BaseModel):
    keywords: list[str] = Field(default_factory=list)
    integrations: list[str] = Field(default_factory=list)


class Agent(BaseModel):
    id: str
    description: str = ""
    model: str = ""
    system_prompt: str = ""
    feature: str = "default"
    default: bool = False
    rules: AgentRules = Field(default_factory=AgentRules)


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
    text = path.read_text() if path else (resources.files("common") / "agents.yaml").read_text()
    registry = AgentRegistry.model_validate(yaml.safe_load(text))
    if not registry.agents:
        raise ValueError("agents file defines no agents")
    return registry
