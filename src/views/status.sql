-- views::status::rows: the latest row of each pair with its sparkline, baseline and alarm.
-- Superseded rows (replaced before they were sent) are not "the latest outcome" of anything
-- and are left out. $1 app_id or NULL, $2 sparkline length, $3 account or NULL.
WITH latest AS (
    SELECT DISTINCT ON (app_id, mcc) app_id, mcc, scheduled_for, rate, state,
        provider_status, COALESCE(reason, provider_reason, error) AS detail,
        backfill_number, cardinal_number, account
    FROM report_submissions
    WHERE ($1::text IS NULL OR app_id = $1) AND state <> 'superseded'
        AND app_id IS NOT NULL AND mcc IS NOT NULL
    ORDER BY app_id, mcc, scheduled_for DESC, id DESC)
SELECT l.app_id AS "app_id!", l.mcc AS "mcc!", l.scheduled_for AS "tick!",
    (l.rate * 100)::int AS hundredths, l.state AS "state!: State",
    l.provider_status AS "provider_status: ProviderStatus", l.detail,
    l.backfill_number::text AS backfill_number, l.cardinal_number::text AS cardinal_number,
    COALESCE(h.rates, '{}') AS "rates!: Vec<Option<i32>>",
    (b.baseline * 100)::int AS baseline, (a.app_id IS NOT NULL) AS "firing!",
    a.since AS "alarm_since?", b.baseline IS NOT NULL AS "judged!", l.account
FROM latest l
LEFT JOIN LATERAL (
    SELECT array_agg(CASE WHEN x.state = 'succeeded' THEN (x.rate * 100)::int END
        ORDER BY x.scheduled_for) AS rates FROM (
        SELECT s.rate, s.state, s.scheduled_for FROM report_submissions s
        WHERE s.app_id = l.app_id AND s.mcc = l.mcc
        ORDER BY s.scheduled_for DESC LIMIT $2) x) h ON true
LEFT JOIN LATERAL (
    SELECT s.baseline FROM report_submissions s
    WHERE s.app_id = l.app_id AND s.mcc = l.mcc AND s.baseline IS NOT NULL
    ORDER BY s.scheduled_for DESC LIMIT 1) b ON true
LEFT JOIN route_alarms a ON a.app_id = l.app_id AND a.mcc = l.mcc
WHERE ($3::text IS NULL OR l.account = $3)
ORDER BY l.account NULLS FIRST, l.app_id, l.mcc
