-- a workload whose job was cancelled before it ran; a running one asked to stop
ALTER TABLE workloads DROP CONSTRAINT workloads_status_check;
ALTER TABLE workloads ADD CONSTRAINT workloads_status_check
    CHECK (status IN ('assigned', 'running', 'succeeded', 'failed', 'cancelled'));
ALTER TABLE workloads ADD COLUMN cancel_requested_at timestamptz;
-- jobs cancelled before their FundsHeld came: that FundsHeld is cancelled instead of assigned
CREATE TABLE cancellations (
    job_id       uuid PRIMARY KEY,
    tenant       text        NOT NULL,
    name         text        NOT NULL,
    reason       text        NOT NULL,
    cancelled_at timestamptz NOT NULL,
    event_id     uuid        NOT NULL
);
