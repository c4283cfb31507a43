from libs.common.settings import CommonSettings


class IntakeSettings(CommonSettings):
    """Env: NATS_URL, DATABASE_URL, INTAKE_SCHEMA."""

    intake_schema: str = "intake"
