-- every service schema: exactly-once effects (inbox) and reliable publishing (outbox)
CREATE TABLE IF NOT EXISTS inbox (
    handler     text        NOT NULL,
    event_id    uuid        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (handler, event_id)
);
CREATE TABLE IF NOT EXISTS outbox (
    seq          bigserial PRIMARY KEY,
    event_id     uuid        NOT NULL UNIQUE,
    subject      text        NOT NULL,
    body         jsonb       NOT NULL,
    headers      jsonb       NOT NULL DEFAULT '{}',
    published_at timestamptz,
    failed       text        -- set when the row can never be published (dead-lettered instead)
);
CREATE INDEX IF NOT EXISTS outbox_unpublished ON outbox (seq) WHERE published_at IS NULL;
