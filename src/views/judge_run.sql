-- views::alarm::judge_run: $1 run, $2 min_cardinal, $3 baseline samples, $4 the samples a
-- baseline needs, $5 drop points. See the function for what it does.
WITH cur AS (
    SELECT id, app_id, mcc, scheduled_for FROM report_submissions
    WHERE run_id = $1 AND rate IS NOT NULL AND cardinal_number >= $2::bigint),
base AS (
    SELECT c.id, round(percentile_cont(0.5) WITHIN GROUP (ORDER BY h.rate)::numeric, 2)
        AS median
    FROM cur c CROSS JOIN LATERAL (
        SELECT s.rate FROM report_submissions s
        WHERE s.app_id = c.app_id AND s.mcc = c.mcc AND s.state = 'succeeded'
          AND s.alarm IS NOT TRUE AND s.scheduled_for < c.scheduled_for
          AND s.cardinal_number >= $2::bigint
        ORDER BY s.scheduled_for DESC LIMIT $3) h
    GROUP BY c.id HAVING count(*) >= $4),
judged AS (
    UPDATE report_submissions s SET baseline = b.median,
        alarm = (b.median - s.rate) > $5::float8::numeric
    FROM base b WHERE s.id = b.id
    RETURNING s.id, s.app_id, s.mcc, s.rate, s.baseline, s.alarm,
        s.backfill_number, s.cardinal_number),
before AS (
    SELECT a.app_id, a.mcc, a.since, a.notified_at FROM route_alarms a
    JOIN judged j ON j.app_id = a.app_id AND j.mcc = a.mcc),
opened AS (
    INSERT INTO route_alarms (app_id, mcc, submission_id, rate, baseline)
    SELECT app_id, mcc, id, rate, baseline FROM judged WHERE alarm
    ON CONFLICT (app_id, mcc) DO UPDATE SET submission_id = EXCLUDED.submission_id,
        rate = EXCLUDED.rate, baseline = EXCLUDED.baseline, updated_at = now()
    RETURNING app_id, mcc, since, notified_at),
closed AS (
    DELETE FROM route_alarms a USING judged j
    WHERE a.app_id = j.app_id AND a.mcc = j.mcc AND NOT j.alarm
    RETURNING a.app_id)
SELECT j.id AS "id?", j.app_id AS "app_id?", j.mcc AS "mcc?",
    (j.rate * 100)::int AS "rate?", (j.baseline * 100)::int AS "baseline?",
    j.alarm AS "dropped?", j.backfill_number::text AS "backfill_number?",
    j.cardinal_number::text AS "cardinal_number?",
    COALESCE(o.since, b.since) AS "since?", (b.app_id IS NOT NULL) AS "was_firing?",
    COALESCE(o.notified_at, b.notified_at) IS NOT NULL AS "notified?",
    (SELECT count(*) FROM judged) AS "judged!"
FROM judged j
LEFT JOIN before b ON b.app_id = j.app_id AND b.mcc = j.mcc
LEFT JOIN opened o ON o.app_id = j.app_id AND o.mcc = j.mcc
WHERE j.alarm OR b.app_id IS NOT NULL
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    (SELECT count(*) FROM judged)
ORDER BY 2 NULLS LAST, 3
