-- The fence: whatever a source row holds, it is recorded, and every reason the queue writes
-- about a deadline is worded by the database, with its own clock, in one place.

-- A source row whose app_id or mcc is NULL is recorded as invalid with NULL there, not as an
-- empty string: two such rows of one tick are then both kept (NULLs never collide in the
-- unique index), and nothing reads an empty string as an app.
ALTER TABLE report_submissions
    ALTER COLUMN app_id DROP NOT NULL,
    ALTER COLUMN mcc DROP NOT NULL;

-- Why a pending row ended at its deadline, in one form for every path that ends one (an
-- attempt whose retry would come too late, a row that waited past it): the attempts in words
-- that agree in number, and the last attempt's cause whenever there was one.
CREATE FUNCTION backfill_reporter_deadline_reason(attempts integer, cause text)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT 'deadline passed ' || CASE
        WHEN attempts <= 0 THEN 'before any attempt'
        WHEN attempts = 1 THEN 'after 1 attempt' || COALESCE(': ' || cause, '')
        ELSE 'after ' || attempts || ' attempts' || COALESCE(': ' || cause, '')
    END
$$;
