-- Several provider accounts in one deployment ([[accounts]] in the config). Each submission
-- records the account whose key and secret sign it, decided when its tick is planned, so that
-- a row is sent by the account it was planned for even when the config changes before it is
-- sent; `history`, `status` and the dashboards read it.
--
-- NULL: the unnamed account of [provider] api_key (so every row written before accounts
-- existed), or no account at all (an app that no account lists, recorded as invalid).
ALTER TABLE report_submissions ADD COLUMN account text;
