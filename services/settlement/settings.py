from libs.common.settings import CommonSettings


class SettlementSettings(CommonSettings):
    """Env: NATS_URL, DATABASE_URL, SETTLEMENT_SCHEMA, SETTLEMENT_FEE_BPS (exchange fee, basis points)."""

    settlement_schema: str = "settlement"
    settlement_fee_bps: int = 250  # 2.5 %
