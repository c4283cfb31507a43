CREATE TABLE applied (event_id uuid PRIMARY KEY, n int NOT NULL);
