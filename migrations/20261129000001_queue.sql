-- report_submissions becomes the work queue that every instance sends from (River's job table
-- is the model): a pending row is due at next_attempt_at, is claimed with FOR UPDATE SKIP LOCKED
-- under a lease (lease_owner until lease_expires_at, renewed while its instance works), and is
-- retried with backoff until its deadline. Correctness no longer rests on a session advisory
-- lock: a row belongs to whoever holds an unexpired lease on it.

ALTER TABLE report_submissions
    -- when a pending row may be claimed next: at once, after a backoff, or, while it is leased,
    -- when the lease expires (so that rows being sent leave the head of the due index)
    ADD COLUMN next_attempt_at  timestamptz,
    -- after this instant a pending row is no longer sent: it becomes failed, or superseded when
    -- a newer tick of its pair exists. By default the next tick of the schedule.
    ADD COLUMN deadline         timestamptz,
    -- the instance (host:pid:nonce) working the row, and until when; NULL when nobody is
    ADD COLUMN lease_owner      text,
    ADD COLUMN lease_expires_at timestamptz,
    -- the instance that made the last attempt, for operators running several
    ADD COLUMN attempted_by     text;

-- Rows left pending by the previous release are due at once. Their deadline is filled in by
-- the first instance that starts, from its schedule (the next tick), since SQL cannot read cron.
UPDATE report_submissions SET next_attempt_at = created_at WHERE state = 'pending';

-- The claim: due pending rows in order. Partial, so it holds only the queue, not the history.
CREATE INDEX report_submissions_due
    ON report_submissions (next_attempt_at, id) WHERE state = 'pending';
-- The claim of `run --once`, which works only its own run, in claim order; and "is anything
-- of this run still pending?", asked after each outcome write to close the run.
CREATE INDEX report_submissions_pending_run
    ON report_submissions (run_id, next_attempt_at, id) WHERE state = 'pending';
-- "Which pending rows are older than the tick being planned?", to supersede them. Replaces the
-- index of the old start-up recovery, which led with app_id and so could not answer that.
CREATE INDEX report_submissions_pending_tick
    ON report_submissions (scheduled_for) WHERE state = 'pending';
DROP INDEX report_submissions_pending;

-- Why a tick was claimed late or never run (a database outage, a replaced tick), for operators.
ALTER TABLE report_runs ADD COLUMN note text;
