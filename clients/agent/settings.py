from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

from clients.agent.catalog import USD_TO_EUR_DEFAULT, default_data_dir

REPO = Path(__file__).resolve().parents[2]


class AgentSettings(BaseSettings):
    """Env prefix AGENT_ (plus NATS_URL).

    `mounts` maps path prefixes in a job's command and env to host folders, as volume mounts would:
    by default `/myjobs` is the repository's `examples/myjobs` and `/data` the shared data folder.
    """

    model_config = SettingsConfigDict(env_prefix="AGENT_", extra="ignore")

    nats_url: str = "nats://127.0.0.1:4222"
    name: str = "demo"  # the durable consumer is agent-<name>
    vendors: str = "all"  # comma-separated vendor names, or all
    data_dir: Path = default_data_dir()
    usd_to_eur: Decimal = USD_TO_EUR_DEFAULT  # catalog prices are USD; documented, configurable rate
    state_dir: Path = Path(".state")
    mounts: str = ""  # "/myjobs=/path,/data=/path"; empty = the defaults above
    heartbeat_s: float = 60.0  # offers are re-published this often (they are the vendor's heartbeat)
    window_days: int = 7  # availability offered from now on
    sample_interval_s: float = 0.5

    def mount_map(self) -> dict[str, Path]:
        if not self.mounts:
            return {"/myjobs": REPO / "examples" / "myjobs", "/data": self.data_dir}
        pairs = (m.split("=", 1) for m in self.mounts.split(",") if m.strip())
        return {k.strip().rstrip("/"): Path(v.strip()) for k, v in pairs}

    def model_post_init(self, __context: object) -> None:
        import os
        self.nats_url = os.environ.get("NATS_URL", self.nats_url)
