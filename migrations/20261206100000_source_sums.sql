-- The default source's window sums, kept per pair and moved with the window by each tick's
-- planning (src/sums.rs), so that a tick reads the buckets that entered and left the window
-- rather than the whole window. A cache: it is recounted from otp_counts whenever in doubt.

-- numeric: a sum of bigints may not fit a bigint. fillfactor leaves room on each page, so
-- that the sums of every pair, updated at each tick, are rewritten in place (HOT updates).
CREATE TABLE source_sums (
    app_id     text    NOT NULL,
    mcc        integer NOT NULL,
    -- buckets summed: a pair left with none is dropped, as the window query would not return it
    buckets    bigint  NOT NULL,
    sent       numeric NOT NULL,
    backfilled numeric NOT NULL,
    PRIMARY KEY (app_id, mcc)
) WITH (fillfactor = 80);

-- What the sums cover: buckets starting in [window_start, settled_through); and when they were
-- last read whole from otp_counts. One row.
CREATE TABLE source_sums_state (
    only_row        boolean     PRIMARY KEY DEFAULT true CHECK (only_row),
    window_start    timestamptz NOT NULL,
    settled_through timestamptz NOT NULL,
    recounted_at    timestamptz NOT NULL
);
