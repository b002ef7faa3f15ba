"""Process settings, read once from the environment (conventional names, see DESIGN §6)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.platform import outbound
from common.platform.keys import queue_name

JwtAlgorithm = Literal["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512"]
MIN_SECRET_BYTES = 32
# The browser origins `relaygate dev` allows: any port of http://localhost and http://127.0.0.1.
DEV_CORS_ORIGIN_REGEX = r"^http://(localhost|127\.0\.0\.1)(:\d+)?$"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    # Infrastructure. Empty means "use the embedded server" (only `relaygate dev` starts it).
    database_url: str = ""
    redis_url: str = ""
    queue_redis_url: str = ""
    stream_redis_url: str = ""
    # The streams Redis is a Redis Cluster (the queue Redis never is: ARQ needs one server).
    stream_redis_cluster: bool = False
    data_dir: Path = Field(default=Path(".relaygate"), validation_alias="RELAYGATE_HOME")

    # Auth.
    jwt_secret_key: SecretStr = SecretStr("")
    jwt_public_key: str = ""
    jwt_algorithm: JwtAlgorithm = "HS256"
    jwt_audience: str = ""
    jwt_issuer: str = ""
    api_key_cache_seconds: float = 10.0
    # Lookups of API keys no cache knows, per second per gateway process: an unknown-key flood
    # cannot turn into a Postgres query storm (over it, such keys get 503 with Retry-After).
    api_key_lookups_per_second: float = Field(default=50.0, gt=0)
    # Set by `relaygate dev`: a JWT secret shorter than 32 bytes is accepted there only.
    relaygate_dev: bool = False

    # Limits (docs/API.md "Limits and quotas"); 0 turns a limit off.
    rate_limit_user_per_minute: int = Field(default=600, ge=0)
    rate_limit_tenant_per_minute: int = Field(default=6_000, ge=0)
    rate_limit_integration_per_minute: int = Field(default=3_000, ge=0)
    max_running_requests_per_user: int = Field(default=50, ge=0)
    max_streams_per_user: int = Field(default=100, ge=0)
    max_streams_per_process: int = Field(default=0, ge=0)
    # Descriptors a gateway keeps for everything but SSE streams (Postgres and Redis connections,
    # other HTTP connections, files): past RLIMIT_NOFILE less this, new streams get 503.
    stream_fd_reserve: int = Field(default=1_000, ge=0)
    max_reply_tokens: int = Field(default=4_096, ge=0)

    # Budgets (docs/USAGE.md): defaults per UTC day and month; 0 turns one off.
    budget_tenant_tokens_per_day: int = Field(default=0, ge=0)
    budget_tenant_tokens_per_month: int = Field(default=0, ge=0)
    budget_tenant_cost_usd_per_day: float = Field(default=0.0, ge=0)
    budget_tenant_cost_usd_per_month: float = Field(default=0.0, ge=0)
    budget_user_tokens_per_day: int = Field(default=0, ge=0)
    budget_user_tokens_per_month: int = Field(default=0, ge=0)
    budget_user_cost_usd_per_day: float = Field(default=0.0, ge=0)
    budget_user_cost_usd_per_month: float = Field(default=0.0, ge=0)

    # HTTP.
    max_body_bytes: int = 256 * 1024
    # Browser origins allowed to call the API (comma-separated; empty: none). `relaygate dev` sets
    # CORS_ALLOW_ORIGIN_REGEX to allow any http://localhost and http://127.0.0.1 port.
    cors_allow_origins: str = ""
    cors_allow_origin_regex: str = ""
    max_wait_seconds: float = 60.0

    # Streams (DESIGN §2).
    stream_buckets: int = 256
    stream_ttl_seconds: int = 24 * 3600
    stream_maxlen: int = 10_000
    sse_heartbeat_seconds: float = 15.0
    sse_client_queue: int = 2_000
    hub_block_ms: int = 5_000
    hub_notice_keys: int = Field(default=32, ge=0)

    # Workers.
    feature: str = "default"
    worker_max_jobs: int = 1000
    worker_poll_delay: float = 1.0
    worker_max_lag_ms: float = 1000.0
    worker_admit_batch: int = 100
    worker_start_priority_ms: float = Field(default=500.0, ge=0)
    worker_drain_seconds: float = 20.0
    worker_stream_connections: int = 16
    worker_metrics_port: int = 0
    # `relaygate worker` runs this many processes under one supervisor (one per core).
    worker_processes: int = Field(default=1, ge=1)
    token_flush_ms: float = Field(default=15.0, ge=0)
    token_flush_tokens: int = 32
    # Past this many token events a second (its running replies / TOKEN_FLUSH_MS), a worker's tick
    # widens (up to 100 ms) so tokens coalesce instead of every later stage paying per event; 0: never.
    token_events_per_second: float = Field(default=10_000.0, ge=0)
    lease_seconds: float = 15.0
    heartbeat_seconds: float = 1.0
    reaper_interval_seconds: float = 1.0
    maintenance_interval_seconds: float = 10.0
    request_timeout_seconds: int = 600
    session_ttl_seconds: int = 7 * 24 * 3600
    history_turns: int = 20
    agents_file: Path | None = None

    # Model. Empty LLM_MODEL selects the built-in offline model.
    llm_model: str = ""
    llm_api_base: str = ""
    llm_api_key: SecretStr = SecretStr("")
    llm_retries: int = 3
    # `auto`: openai/ and hosted_vllm/ models at LLM_API_BASE stream through the lean client (workers/model.py);
    # `off`: every real model goes through litellm.
    llm_fast_path: Literal["auto", "off"] = "auto"
    offline_model_tokens: int = 60
    offline_model_tokens_per_second: float = 40.0

    # Agents' MCP tools (docs/AGENTS.md).
    tool_call_timeout_seconds: float = Field(default=30.0, gt=0)
    tool_connect_timeout_seconds: float = Field(default=30.0, gt=0)
    tool_result_max_chars: int = Field(default=16_000, ge=100)
    tool_list_ttl_seconds: float = Field(default=300.0, ge=0)
    approval_timeout_seconds: float = Field(default=3600.0, gt=0)

    # Flow runs.
    redis_cache_ttl: int = 300
    flow_feature: str = "default"
    flow_policies: str = (
        "common.flows.policies:TenantIsolationPolicy,common.flows.policies:RetryLimitPolicy,"
        "common.flows.policies:TimeoutLimitPolicy"
    )
    flow_max_retries: int = 10
    flow_max_timeout_seconds: int = 7200
    flow_retry_limit_action: str = "clamp"
    flow_function_modules: str = ""
    # Longest a run may take from its first start, over every attempt; then it fails.
    flow_timeout_seconds: int = Field(default=86_400, gt=0)
    # Bounds on one flow (docs/FLOWS.md "Limits of flow runs"): over one, a 400 before anything runs,
    # or a failed task with a clear error.
    flow_max_tasks: int = Field(default=500, ge=1)
    flow_max_dependencies: int = Field(default=100, ge=1)
    flow_max_parallel: int = Field(default=10, ge=1)
    flow_max_render_bytes: int = Field(default=1024 * 1024, ge=1024)
    flow_max_output_bytes: int = Field(default=1024 * 1024, ge=1024)
    flow_max_run_output_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    event_sink_url: str = ""
    event_sink_retries: int = 5

    # Dispatcher and delivery channels (integration guide; docs/DELIVERY.md).
    dispatcher_max_jobs: int = 200
    delivery_job_timeout_seconds: int = 60
    delivery_retry_delay_scale: float = 1.0
    delivery_expiry_seconds: int = 24 * 3600
    delivery_test_enabled: bool = False
    smtp_host: str = ""
    smtp_port: int = 587
    smtp_username: str = ""
    smtp_password: SecretStr = SecretStr("")
    smtp_starttls: bool = True
    smtp_ca_file: str = ""  # a private CA's bundle for the SMTP server's certificate
    smtp_from: str = "relaygate@localhost"
    smtp_timeout_seconds: float = 10.0
    webhook_timeout_seconds: float = 10.0
    sms_api_url: str = ""
    sms_account_sid: str = ""
    sms_auth_token: SecretStr = SecretStr("")
    sms_from: str = ""
    sms_max_chars: int = 1600

    # Slack (single-workspace install; more workspaces live in `slack_installations`).
    slack_signing_secret: SecretStr = SecretStr("")
    slack_bot_token: SecretStr = SecretStr("")
    slack_team_id: str = ""  # required with slack_bot_token
    slack_tenant_id: str = "slack"
    slack_api_url: str = ""
    slack_native_streaming: bool = False
    slack_edit_interval_seconds: float = 1.5
    slack_edits_per_minute: int = 50
    slack_max_retry_after_seconds: float = 5.0
    slack_message_chars: int = 3500

    # Requests to URLs users choose (flow http tasks, webhook deliveries; docs/OPERATIONS.md "Outbound requests").
    # Comma list of host names and CIDRs that may be private; everything else must be public.
    outbound_allow_hosts: str = ""
    outbound_max_response_bytes: int = Field(default=1024 * 1024, ge=1)
    outbound_timeout_seconds: float = Field(default=30.0, gt=0)

    db_pool_size: int = 20
    log_level: str = "INFO"
    # `json` (one object per line) for servers; `text` (one readable line) is what `relaygate dev` sets.
    log_format: Literal["json", "text"] = "json"

    @field_validator("outbound_allow_hosts")
    @classmethod
    def _allow_list(cls, value: str) -> str:
        outbound.parse_allow(value)  # a bad entry stops the process, named
        return value

    @model_validator(mode="after")
    def _slack_bound(self) -> Settings:
        """The settings' bot token serves exactly one workspace: without its id it would answer any."""
        if self.slack_bot_token.get_secret_value() and not self.slack_team_id:
            raise ValueError(
                "SLACK_BOT_TOKEN needs SLACK_TEAM_ID, the id (T…) of the workspace the token belongs to:"
                " relaygate answers only that workspace with it (more workspaces: slack_installations)"
            )
        return self

    @model_validator(mode="after")
    def _default_redis_roles(self) -> Settings:
        self.queue_redis_url = self.queue_redis_url or self.redis_url
        self.stream_redis_url = self.stream_redis_url or self.redis_url
        return self

    def auth_problem(self) -> str | None:
        """Why the gateway must not start with these auth settings, or None."""
        secret = self.jwt_secret_key.get_secret_value().encode()
        if self.jwt_algorithm.startswith("HS") and secret and len(secret) < MIN_SECRET_BYTES and not self.relaygate_dev:
            return f"JWT_SECRET_KEY must be at least {MIN_SECRET_BYTES} bytes for {self.jwt_algorithm}"
        return None

    def outbound_policy(self) -> outbound.Policy:
        """The outbound guard's policy of these settings."""
        return outbound.policy(
            self.outbound_allow_hosts, self.outbound_max_response_bytes, self.outbound_timeout_seconds
        )

    def cors_origins(self) -> list[str]:
        return [o.strip().rstrip("/") for o in self.cors_allow_origins.split(",") if o.strip()]

    def feature_queue(self, feature: str | None = None) -> str:
        return queue_name(feature or self.feature)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
