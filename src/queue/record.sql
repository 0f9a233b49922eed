-- queue::store::record: one outcome per row of the arrays $2 to $12, written by the owner $1
-- of the lease; $13 is the reason of a row a newer tick replaced. See the function for why.
WITH w AS MATERIALIZED (
    SELECT u.*, s.deadline, s.attempts + (u.elapsed_ms IS NOT NULL)::int AS tries,
        COALESCE(u.error, s.error) AS cause,
        u.supersedable AND EXISTS (SELECT FROM backfill_reporter_newer_ticks(
            s.app_id, s.mcc, s.scheduled_for)) AS newer
    FROM unnest($2::bigint[], $3::text[], $4::text[], $5::bool[], $6::text[],
        $7::bigint[], $8::bigint[], $9::text[], $10::text[], $11::int[], $12::text[])
    AS u(id, kind, state, supersedable, reason, elapsed_ms, wait_ms, provider_status,
        provider_reason, http_status, error)
    JOIN report_submissions s ON s.id = u.id),
d AS (SELECT w.*, CASE
        WHEN w.newer THEN 'superseded'
        WHEN w.kind = 'retry' AND now() + w.wait_ms * interval '1 millisecond'
            >= w.deadline THEN 'failed'
        WHEN w.kind = 'expire' AND w.deadline <= now() THEN 'failed'
        WHEN w.kind IN ('retry', 'expire', 'release') THEN 'pending'
        WHEN w.kind = 'unsent' THEN w.state
        ELSE w.kind END AS final
    FROM w)
UPDATE report_submissions s SET
    state = d.final,
    reason = CASE WHEN d.newer THEN $13
        WHEN d.final = 'failed' AND d.kind IN ('retry', 'expire')
            THEN backfill_reporter_deadline_reason(d.tries, d.cause)
        ELSE COALESCE(d.reason, s.reason) END,
    attempts = d.tries,
    provider_status = CASE WHEN d.elapsed_ms IS NULL THEN s.provider_status
        ELSE d.provider_status END,
    provider_reason = CASE WHEN d.elapsed_ms IS NULL THEN s.provider_reason
        ELSE d.provider_reason END,
    http_status = CASE WHEN d.elapsed_ms IS NULL THEN s.http_status
        ELSE d.http_status END,
    error = CASE WHEN d.elapsed_ms IS NULL THEN s.error ELSE d.error END,
    first_attempt_at = COALESCE(s.first_attempt_at,
        now() - d.elapsed_ms * interval '1 millisecond'),
    attempted_by = CASE WHEN d.elapsed_ms IS NULL THEN s.attempted_by ELSE $1 END,
    next_attempt_at = CASE WHEN d.final = 'pending'
        THEN now() + COALESCE(d.wait_ms, 0) * interval '1 millisecond'
        ELSE s.next_attempt_at END,
    finished_at = CASE WHEN d.final <> 'pending' THEN now() END,
    duration_ms = CASE WHEN d.final <> 'pending' THEN (extract(epoch FROM now()
        - COALESCE(s.first_attempt_at, now() - d.elapsed_ms * interval '1 millisecond'))
        * 1000)::bigint END,
    lease_owner = NULL, lease_expires_at = NULL
FROM d
WHERE s.id = d.id AND s.state = (SELECT 'pending'::text) AND s.lease_owner = $1
RETURNING s.id, s.run_id, s.state AS "state: State", s.account
