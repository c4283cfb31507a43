from libs.common.settings import CommonSettings


class PlacementSettings(CommonSettings):
    """Env: NATS_URL, DATABASE_URL, PLACEMENT_SCHEMA."""

    placement_schema: str = "placement"
