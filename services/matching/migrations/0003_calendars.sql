-- an offer's hourly availability (free capacity and prices per window of whole hours; NULL: one window
-- from available_from to available_until at the offer's price) and its compliance attributes
ALTER TABLE offers ADD COLUMN calendar jsonb;
ALTER TABLE offers ADD COLUMN attributes text[] NOT NULL DEFAULT '{}';
