-- Route-health alarm: each new rate is compared with the median of its pair's recent succeeded
-- reports (the baseline). The verdict is kept with the submission; the alarms firing now are
-- kept per pair, so that an alert is sent once per pair until the pair recovers.

-- The baseline the rate was compared with, and whether it fell more than [alarm] drop_points
-- below it. Both NULL when the pair was not judged (no rate, too few codes sent, too few
-- earlier reports for a baseline).
ALTER TABLE report_submissions
    ADD COLUMN baseline numeric(5, 2) CHECK (baseline BETWEEN 0 AND 100),
    ADD COLUMN alarm    boolean;

-- The baseline of a pair: its latest succeeded reports, newest first, never one that itself
-- dropped (a broken route must not drag its own baseline down and silence its alarm). INCLUDE
-- keeps the lookup to the index.
CREATE INDEX report_submissions_baseline
    ON report_submissions (app_id, mcc, scheduled_for DESC) INCLUDE (rate, cardinal_number)
    WHERE state = 'succeeded' AND alarm IS NOT TRUE;

-- One row per (app, MCC) whose alarm is firing; deleted when the pair recovers.
CREATE TABLE route_alarms (
    app_id        text          NOT NULL,
    mcc           text          NOT NULL,
    -- when the rate first fell
    since         timestamptz   NOT NULL DEFAULT now(),
    -- the latest submission that found the pair still down, with its numbers
    submission_id bigint        REFERENCES report_submissions (id) ON DELETE SET NULL,
    rate          numeric(5, 2) NOT NULL,
    baseline      numeric(5, 2) NOT NULL,
    updated_at    timestamptz   NOT NULL DEFAULT now(),
    -- when the webhook accepted the alert; NULL while it is still to be sent (or no webhook)
    notified_at   timestamptz,
    PRIMARY KEY (app_id, mcc)
);
