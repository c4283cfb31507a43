from libs.common.settings import CommonSettings


class MeteringSettings(CommonSettings):
    """Env: NATS_URL, DATABASE_URL, METERING_SCHEMA."""

    metering_schema: str = "metering"
