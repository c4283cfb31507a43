from libs.common.settings import CommonSettings


class MatchingSettings(CommonSettings):
    """Env: NATS_URL, DATABASE_URL, MATCHING_SCHEMA."""

    matching_schema: str = "matching"
