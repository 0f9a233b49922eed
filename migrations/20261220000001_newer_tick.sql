-- "A newer tick of this pair exists", in one place: the queue asks it when it plans a tick
-- (older pending rows are superseded), claims a row (a replaced row is not sent), writes an
-- outcome (a row that would wait becomes superseded) and ends overdue rows.
--
-- The ids of the pair's rows of later ticks. A set-returning SQL function that is STABLE and
-- not STRICT is inlined by the planner into the statement that calls it, so
-- `EXISTS (SELECT FROM backfill_reporter_newer_ticks(s.app_id, s.mcc, s.scheduled_for))`
-- is planned exactly as the sub-select it replaces: one probe of the unique index on
-- (app_id, mcc, scheduled_for). A boolean function would not be inlined (it holds a
-- sub-select) and would run as a separate call for every row.
CREATE FUNCTION backfill_reporter_newer_ticks(app_id text, mcc text, after timestamptz)
RETURNS SETOF bigint LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT n.id FROM report_submissions n
    WHERE n.app_id = $1 AND n.mcc = $2 AND n.scheduled_for > $3
$$;
