CREATE TABLE jobs (
    job_id        uuid PRIMARY KEY,
    tenant        text        NOT NULL,
    name          text        NOT NULL,
    status        text        NOT NULL,
    status_rank   int         NOT NULL,
    outcome       text,
    vendor        text,
    node          text,
    total_micro_eur bigint,
    manifest      jsonb       NOT NULL,
    request       jsonb       NOT NULL,
    submitted_at  timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    UNIQUE (tenant, name)
);
-- the timeline of every job (and of refused submissions, keyed by the id the job would have had)
CREATE TABLE job_events (
    seq       bigserial PRIMARY KEY,
    job_id    uuid        NOT NULL,
    tenant    text        NOT NULL,
    name      text        NOT NULL,
    event_id  uuid        NOT NULL UNIQUE,
    time      timestamptz NOT NULL,
    type      text        NOT NULL,
    source    text        NOT NULL,
    detail    text        NOT NULL
);
CREATE INDEX job_events_by_job ON job_events (tenant, name, time, seq);
