-- The demo's counts: three days of plausible OTP traffic for three apps in five countries,
-- one row per app, country and 5 minutes, ending now. Traffic follows the day in China's time;
-- each country has its usual backfill rate with some noise; Indonesia's (510) collapses in the
-- last three hours. The same every time (setseed), relative to now().
--
-- Loaded by scripts/demo (psql -f) and by tests/it/dashboard.rs, which runs every panel of the
-- Grafana dashboard against the report tables that cycles over these counts fill.
SELECT setseed(0.42);

INSERT INTO otp_counts (app_id, mcc, bucket_start, sent, backfilled)
SELECT app_id, mcc, b, sent, LEAST(sent, round(sent * rate))::bigint
FROM (
    SELECT p.app_id, p.mcc, b,
           greatest(1, round(p.volume
               * (0.55 + 0.45 * sin(2 * pi() * (extract(epoch FROM b) / 86400.0 - 0.125)))
               * (0.8 + 0.4 * random())))::bigint AS sent,
           CASE WHEN p.mcc = 510 AND b >= now() - interval '3 hours'
                THEN 0.06 + 0.04 * random()
                ELSE p.rate + 0.1 * (random() - 0.5) END AS rate
    FROM (VALUES ('demoShop', 460, 60, 0.82), ('demoShop', 510, 40, 0.76),
                 ('demoShop', 404, 50, 0.68), ('demoBank', 510, 30, 0.79),
                 ('demoBank', 234, 20, 0.88), ('demoBank', 724, 25, 0.71),
                 ('demoRide', 460, 45, 0.84), ('demoRide', 724, 35, 0.73))
         AS p(app_id, mcc, volume, rate)
    CROSS JOIN generate_series(date_trunc('minute', now()) - interval '3 days',
                               now() - interval '1 minute', interval '5 minutes') AS b
) x;
