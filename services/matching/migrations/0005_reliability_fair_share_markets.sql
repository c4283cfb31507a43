-- vendor reliability: each vendor's record of placements that completed and that failed or were lost
CREATE TABLE vendor_records (
    vendor    text PRIMARY KEY,
    completed int NOT NULL DEFAULT 0,
    failed    int NOT NULL DEFAULT 0
);
-- fair share reads the tenants' recent bookings
CREATE INDEX reservations_start ON reservations (start_at);
-- scale-out: a job of a market another instance owns is recorded as such, so that its later facts
-- (cancel, placement failure) are known to be none of this instance's business
ALTER TABLE pending_jobs DROP CONSTRAINT pending_jobs_status_check;
ALTER TABLE pending_jobs ADD CONSTRAINT pending_jobs_status_check
    CHECK (status IN ('waiting', 'matched', 'expired', 'refused', 'cancelled', 'elsewhere'));
