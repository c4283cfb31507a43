from libs.common.settings import CommonSettings


class SettlementSettings(CommonSettings):
    """Env: NATS_URL, DATABASE_URL, SETTLEMENT_SCHEMA, SETTLEMENT_FEE_BPS (exchange fee, basis points),
    SETTLEMENT_HOLD_GRACE_S (how long after its booked window a job's unspent hold expires)."""

    settlement_schema: str = "settlement"
    settlement_fee_bps: int = 250  # 2.5 %
    settlement_hold_grace_s: int = 3600
