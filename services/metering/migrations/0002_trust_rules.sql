-- Metering that does not trust blindly: the running interval and allocation from placement's start,
-- rejected and late samples, the witness (an independent measurement) and incremental charging.
ALTER TABLE meters
    ADD COLUMN started        boolean     NOT NULL DEFAULT false,
    ADD COLUMN started_at     timestamptz,           -- placement's WorkloadStarted.at
    ADD COLUMN dtu_rate       numeric,               -- dtu_rate(vcpu, memory_gib) it was placed with
    ADD COLUMN last_at        timestamptz,           -- the latest accepted sample's time
    ADD COLUMN rejected       int         NOT NULL DEFAULT 0,
    ADD COLUMN late_samples   int         NOT NULL DEFAULT 0,  -- arrived after the meter closed
    ADD COLUMN witness_cpu_us bigint,
    ADD COLUMN witness_wall_us bigint,
    ADD COLUMN witness_rss_peak_bytes bigint,
    ADD COLUMN witness_dtu_hours numeric,            -- exact; NULL: no witnessed sample yet
    ADD COLUMN charged_intervals bigint   NOT NULL DEFAULT 0,  -- charge intervals reported by MeterProgressed
    -- the figures MeterClosed reported (micro-DTU-hours), kept for queries and audits
    ADD COLUMN claimed_dtu_micro_hours bigint,
    ADD COLUMN dtu_micro_hours bigint,
    ADD COLUMN witness_dtu_micro_hours bigint,
    ADD COLUMN disputed_dtu_micro_hours bigint,
    ADD COLUMN missing_seqs   int[];

-- meters opened before this migration never recorded their start: they count as started with an
-- unknown start and rate, so they keep the old rules (no time window, no clamp) and still close
UPDATE meters SET started = true;

ALTER TABLE usage_samples
    ADD COLUMN witness_cpu_us bigint,
    ADD COLUMN witness_rss_peak_bytes bigint;
