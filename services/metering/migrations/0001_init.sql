CREATE TABLE meters (
    workload_id  uuid PRIMARY KEY,
    job_id       uuid        NOT NULL,
    tenant       text        NOT NULL,
    vendor       text        NOT NULL,
    status       text        NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
    last_seq     int,
    cpu_us       bigint      NOT NULL DEFAULT 0,
    wall_us      bigint      NOT NULL DEFAULT 0,
    rss_peak_bytes bigint    NOT NULL DEFAULT 0,
    dtu_hours    numeric     NOT NULL DEFAULT 0,  -- exact running integral; rounded once, at close
    samples      int         NOT NULL DEFAULT 0,
    outcome      text,
    final_seq    int,        -- last sample seq the vendor announced with the end report
    ended        boolean     NOT NULL DEFAULT false,
    ended_at     timestamptz
);
-- every sample as reported, also those ahead of a gap or before the workload's start is known;
-- keyed by the reporting vendor, so no other party's sample can take a seq's place
CREATE TABLE usage_samples (
    workload_id uuid   NOT NULL,
    vendor      text   NOT NULL,
    seq         int    NOT NULL,
    at          timestamptz NOT NULL,
    cpu_us      bigint NOT NULL,
    wall_us     bigint NOT NULL,
    rss_peak_bytes bigint NOT NULL,
    PRIMARY KEY (workload_id, vendor, seq)
);
