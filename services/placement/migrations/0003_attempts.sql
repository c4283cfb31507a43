-- a job may be placed more than once: when a workload never started (its vendor gave it up, or its node
-- was lost), matching books the job again and placement gets a new attempt; at most one attempt runs
ALTER TABLE workloads DROP CONSTRAINT workloads_job_id_key;
ALTER TABLE workloads ADD COLUMN attempt int NOT NULL DEFAULT 1;
ALTER TABLE workloads ADD COLUMN deadline timestamptz;
ALTER TABLE workloads ADD CONSTRAINT workloads_job_attempt_key UNIQUE (job_id, attempt);
ALTER TABLE workloads DROP CONSTRAINT workloads_status_check;
ALTER TABLE workloads ADD CONSTRAINT workloads_status_check
    CHECK (status IN ('assigned', 'running', 'succeeded', 'failed', 'cancelled', 'unplaced'));
-- nodes matching lost (heartbeats stopped): a match made on one before its loss is never assigned
CREATE TABLE lost_offers (
    offer_id uuid        NOT NULL,
    lost_at  timestamptz NOT NULL,
    vendor   text        NOT NULL,
    node     text        NOT NULL,
    event_id uuid        NOT NULL,
    PRIMARY KEY (offer_id, lost_at)
);
