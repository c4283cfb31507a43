-- a cancelled job leaves the book
ALTER TABLE pending_jobs DROP CONSTRAINT pending_jobs_status_check;
ALTER TABLE pending_jobs ADD CONSTRAINT pending_jobs_status_check
    CHECK (status IN ('waiting', 'matched', 'expired', 'refused', 'cancelled'));
