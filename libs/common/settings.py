"""Settings shared by every process; each service adds its own with an env prefix."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    """`NATS_URL` and `DATABASE_URL`; a service's schema defaults to its name (`<SERVICE>_SCHEMA`)."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore")

    nats_url: str = "nats://127.0.0.1:4222"
    database_url: str = "postgresql://postgres@127.0.0.1:5432/strongmoose"
    batch_size: int = 200  # messages pulled per fetch, handled in one transaction
    stream_replicas: int = 1  # 3 on a NATS cluster (deploy/k8s)
    # a database or NATS outage longer than this makes a service give up and exit 1, for its supervisor to
    # restart it; shorter ones only pause it (its health query answers "not ready" meanwhile)
    max_outage_s: float = 120.0
