-- backfill-reporter schema. Applied by `backfill-reporter migrate` and at the start of `run`;
-- never edit a migration once released: add a new one.

-- The default source: operators' applications upsert one row per (app, MCC, time bucket), e.g.
--   INSERT INTO otp_counts (app_id, mcc, bucket_start, sent, backfilled)
--   VALUES ($1, $2, date_trunc('minute', now()), 1, 0)
--   ON CONFLICT (app_id, mcc, bucket_start)
--   DO UPDATE SET sent = otp_counts.sent + EXCLUDED.sent,
--                 backfilled = otp_counts.backfilled + EXCLUDED.backfilled;
CREATE TABLE IF NOT EXISTS otp_counts (
    app_id       text        NOT NULL,
    mcc          integer     NOT NULL,
    bucket_start timestamptz NOT NULL,
    sent         bigint      NOT NULL DEFAULT 0 CHECK (sent >= 0),
    backfilled   bigint      NOT NULL DEFAULT 0 CHECK (backfilled >= 0),
    PRIMARY KEY (app_id, mcc, bucket_start)
);

-- The window query filters on bucket_start alone; the primary key leads with app_id and cannot
-- serve it. INCLUDE makes it an index-only scan over just the window's rows.
CREATE INDEX IF NOT EXISTS otp_counts_bucket_start_idx
    ON otp_counts (bucket_start) INCLUDE (app_id, mcc, sent, backfilled);

-- One row per cycle.
CREATE TABLE report_runs (
    id            bigserial   PRIMARY KEY,
    scheduled_for timestamptz NOT NULL,
    trigger       text        NOT NULL CHECK (trigger IN ('schedule', 'once')),
    window_start  timestamptz NOT NULL,
    window_end    timestamptz NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    pairs         integer     NOT NULL DEFAULT 0,
    succeeded     integer     NOT NULL DEFAULT 0,
    failed        integer     NOT NULL DEFAULT 0,
    skipped       integer     NOT NULL DEFAULT 0,
    invalid       integer     NOT NULL DEFAULT 0,
    superseded    integer     NOT NULL DEFAULT 0,
    -- host and pid of the instance that ran it, for operators running several
    instance      text        NOT NULL
);

-- Claims a scheduled tick for exactly one instance: the second INSERT of the same tick does
-- nothing (ON CONFLICT DO NOTHING). Ad-hoc `--once` runs are not claimed.
CREATE UNIQUE INDEX report_runs_one_per_tick
    ON report_runs (scheduled_for) WHERE trigger = 'schedule';
CREATE INDEX report_runs_unfinished ON report_runs (id) WHERE finished_at IS NULL;

-- One row per (cycle, app, MCC).
CREATE TABLE report_submissions (
    id               bigserial   PRIMARY KEY,
    run_id           bigint      NOT NULL REFERENCES report_runs (id) ON DELETE CASCADE,
    app_id           text        NOT NULL,
    mcc              text        NOT NULL,
    scheduled_for    timestamptz NOT NULL,
    window_start     timestamptz NOT NULL,
    window_end       timestamptz NOT NULL,
    -- numeric, not bigint: an invalid row keeps whatever the source returned
    backfill_number  numeric,
    cardinal_number  numeric,
    rate             numeric(5, 2) CHECK (rate BETWEEN 0 AND 100),
    callback_time    text        NOT NULL,
    state            text        NOT NULL CHECK (state IN
                         ('pending', 'succeeded', 'failed', 'skipped', 'invalid', 'superseded')),
    -- why it was skipped, invalid, failed or superseded
    reason           text,
    attempts         integer     NOT NULL DEFAULT 0,
    provider_status  text,
    provider_reason  text,
    http_status      integer,
    error            text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    first_attempt_at timestamptz,
    finished_at      timestamptz,
    -- time spent on the provider, all attempts and backoff included
    duration_ms      bigint,
    -- one tick is never submitted twice for a pair
    UNIQUE (app_id, mcc, scheduled_for)
);

CREATE INDEX report_submissions_pending
    ON report_submissions (app_id, mcc, scheduled_for) WHERE state = 'pending';
CREATE INDEX report_submissions_run ON report_submissions (run_id);
CREATE INDEX report_submissions_recent ON report_submissions (scheduled_for DESC, id DESC);
