from decimal import Decimal

from pydantic import Field

from libs.common.settings import CommonSettings


class MeteringSettings(CommonSettings):
    """Env: NATS_URL, DATABASE_URL, METERING_SCHEMA, and the trust rules (see `services.metering.domain`):
    METERING_CHARGE_INTERVAL_S, METERING_CLOCK_SKEW_S, METERING_DISPUTE_TOLERANCE,
    METERING_DISPUTE_FLOOR_MICRO_DTU_HOURS."""

    metering_schema: str = "metering"
    # a running workload's reading is reported (and charged) each time its wall time covers another interval
    metering_charge_interval_s: float = Field(60.0, gt=0)
    # samples are accepted from the start minus this until the end plus this (vendor and exchange clocks differ)
    metering_clock_skew_s: float = Field(5.0, ge=0)
    # billable beyond the witness by more than max(witness x this, the floor) is disputed
    metering_dispute_tolerance: Decimal = Field(Decimal("0.05"), ge=0, allow_inf_nan=False)
    metering_dispute_floor_micro_dtu_hours: int = Field(1_000, ge=0)  # 0.001 DTU-h: tiny jobs do not dispute on noise
