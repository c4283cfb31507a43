-- life after the match: an offer whose heartbeats stopped leaves the book (lost_at = its last publication
-- + the TTL; a re-publication clears it); a job whose workload never started is booked again, attempt by
-- attempt, never on a node that failed it
ALTER TABLE offers ADD COLUMN lost_at timestamptz;
ALTER TABLE pending_jobs ADD COLUMN attempt int NOT NULL DEFAULT 1;
ALTER TABLE pending_jobs ADD COLUMN excluded_offers uuid[] NOT NULL DEFAULT '{}';
-- a reservation per attempt; at most one of a job's is active (released_at IS NULL)
ALTER TABLE reservations ADD COLUMN attempt int NOT NULL DEFAULT 1;
ALTER TABLE reservations DROP CONSTRAINT reservations_pkey;
ALTER TABLE reservations ADD PRIMARY KEY (job_id, attempt);
CREATE UNIQUE INDEX reservations_one_active ON reservations (job_id) WHERE released_at IS NULL;
CREATE INDEX offers_live ON offers (published_at) WHERE lost_at IS NULL;
