from libs.common.settings import CommonSettings
from services.matching.policy import Policy


class MatchingSettings(CommonSettings):
    """Env: NATS_URL, DATABASE_URL, MATCHING_SCHEMA, MATCHING_OFFER_TTL_S, MATCHING_USAGE_HALF_LIFE_S,
    MATCHING_PERIODIC_MARKETS, MATCHING_MARKETS (see services.matching.policy)."""

    matching_schema: str = "matching"
    # an offer not re-published for this long is gone (agents re-publish every AGENT_HEARTBEAT_S, 60 s)
    matching_offer_ttl_s: float = 300.0
    # fair share: a tenant's recent usage halves every this many seconds (HTCondor's default: a day)
    matching_usage_half_life_s: float = 86_400.0
    # markets (region codes) cleared by a call auction, with their interval in seconds: "de-fra=60,se-sto=300"
    matching_periodic_markets: str = ""
    # the markets (region codes or countries) this instance owns, comma-separated; empty: all
    matching_markets: str = ""

    def policy(self) -> Policy:
        return Policy.parse(self.matching_markets, self.matching_periodic_markets, self.matching_usage_half_life_s)
