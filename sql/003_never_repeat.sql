-- 0.2: versions that never repeat, a logout clock, one channel per schema, and
-- notifications that are only hints (every instance re-reads the tables).
-- migrate() runs every file with search_path set to the target schema, and each
-- function keeps that search_path (SET search_path FROM CURRENT), so one schema
-- per tenant works and no function can be hijacked through the caller's path.

-- One row of plugin state: the logout clock, and a generation of the per-user table.
CREATE TABLE IF NOT EXISTS session_refresh_state (
  id          BOOLEAN PRIMARY KEY DEFAULT true CHECK (id),
  -- Raised by every logout, in commit order (the row lock serialises logouts):
  -- a session stamped with the clock at login was authenticated before every
  -- logout with a higher value, and after every logout with a lower one.
  logout_seq  BIGINT NOT NULL DEFAULT 0,
  -- Raised when rows of session_user_versions are deleted or truncated, so every
  -- instance re-reads the whole table instead of only what changed.
  users_epoch BIGINT NOT NULL DEFAULT 0,
  -- true: each per-user change NOTIFYs every instance (milliseconds, for a few
  -- dozen instances). false: nothing is notified and every instance reads the
  -- changes every userPollInterval (for hundreds: a NOTIFY wakes every listener
  -- of the database, so its cost grows with the number of instances).
  user_notify BOOLEAN NOT NULL DEFAULT true
);
INSERT INTO session_refresh_state DEFAULT VALUES ON CONFLICT DO NOTHING;

-- The next value of a version or clock: above the previous one, and at least the
-- server clock in microseconds. A restore brings back old rows, not old time, so
-- a value given out after a restore never equals one given out before it.
CREATE OR REPLACE FUNCTION session_refresh_next(previous BIGINT) RETURNS BIGINT
LANGUAGE sql VOLATILE SET search_path FROM CURRENT AS $$
  SELECT greatest(previous + 1, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint)
$$;

-- The one channel of this schema: tenants in other schemas never wake each other's reads.
CREATE OR REPLACE FUNCTION session_refresh_channel() RETURNS TEXT
LANGUAGE sql STABLE SET search_path FROM CURRENT AS $$
  SELECT CASE WHEN current_schema() = 'public' THEN 'session_refresh' ELSE 'session_refresh.' || current_schema() END
$$;

-- The global version: any write becomes a fresh value that never repeats.
CREATE OR REPLACE FUNCTION session_version_check() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
  previous BIGINT := 0;
BEGIN
  IF NEW.key <> 'session_version' THEN
    RETURN NEW;
  END IF;
  -- 16 digits and at most 2^53 - 1 keeps the value a safe JavaScript integer.
  IF NEW.value !~ '^[0-9]{1,16}$' OR NEW.value::numeric > 9007199254740991 THEN
    RAISE EXCEPTION 'session_version must be a non-negative integer, got %', quote_literal(NEW.value)
      USING ERRCODE = 'check_violation',
            HINT = 'Raise it with: UPDATE system_settings SET value = (value::bigint + 1)::text WHERE key = ''session_version''';
  END IF;
  IF TG_OP = 'UPDATE' AND OLD.key = 'session_version' AND OLD.value ~ '^[0-9]{1,16}$' THEN
    previous := OLD.value::bigint;
  END IF;
  NEW.value := greatest(NEW.value::bigint, session_refresh_next(previous))::text;
  IF NEW.value::bigint > 9007199254740991 THEN
    RAISE EXCEPTION 'session_version would pass 2^53 - 1, which no reader can read'
      USING ERRCODE = 'check_violation',
            HINT = 'A version this high cannot rise: set a lower one with SET session_replication_role = replica, as a restore would; the next bump then takes the clock again.';
  END IF;
  NEW.updated_at := CURRENT_TIMESTAMP;
  RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION session_version_notify() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
  IF NEW.key = 'session_version' THEN
    -- A hint: listeners re-read the table, so a forged payload changes nothing.
    PERFORM pg_notify(session_refresh_channel(), 'version:' || NEW.value);
  END IF;
  RETURN NULL;
END
$$;

-- An ETL whose UPDATE matches no row must fail, not succeed silently: the row is
-- what every instance reads.
CREATE OR REPLACE FUNCTION session_version_must_exist() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM system_settings WHERE key = 'session_version') THEN
    RAISE EXCEPTION 'system_settings has no session_version row: run migrate (npx session-refresh migrate) to create it again'
      USING ERRCODE = 'no_data_found',
            HINT = 'Run migrate(sql) or `npx session-refresh migrate` to create it again.';
  END IF;
  RETURN NULL;
END
$$;

-- Per user: versions that never repeat, logouts on the logout clock.
ALTER TABLE session_user_versions ADD COLUMN IF NOT EXISTS logout_seq BIGINT NOT NULL DEFAULT 0;
-- A hash of the one session a logout keeps (a password change keeps the session that made it).
ALTER TABLE session_user_versions ADD COLUMN IF NOT EXISTS keep_key TEXT CHECK (length(keep_key) <= 64);
-- What a read of the changes since the last one walks, page by page.
CREATE INDEX IF NOT EXISTS session_user_versions_changed ON session_user_versions (changed_xid, user_id);

-- SECURITY DEFINER: a role allowed to change users needs no right on session_refresh_state.
CREATE OR REPLACE FUNCTION session_user_version_stamp() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
  NEW.version := greatest(NEW.version, session_refresh_next(CASE WHEN TG_OP = 'UPDATE' THEN OLD.version ELSE 0 END));
  IF NEW.version > 9007199254740991 THEN
    RAISE EXCEPTION 'session_user_versions.version would pass 2^53 - 1, which no reader can read'
      USING ERRCODE = 'check_violation';
  END IF;
  IF NEW.logout THEN
    UPDATE session_refresh_state SET logout_seq = session_refresh_next(logout_seq) RETURNING logout_seq INTO NEW.logout_seq;
    IF NOT FOUND THEN
      RAISE EXCEPTION 'session_refresh_state has no row: run migrate (npx session-refresh migrate) to create it again'
        USING ERRCODE = 'no_data_found',
              HINT = 'Run migrate(sql) or `npx session-refresh migrate` to create it again.';
    END IF;
    NEW.logout_version := NEW.version;
    NEW.logout_at := clock_timestamp();
    -- Set only by session_change_user(id, true, keep) for this one statement.
    NEW.keep_key := nullif(current_setting('session_refresh.keep', true), '');
  ELSIF TG_OP = 'UPDATE' THEN
    -- A refresh never undoes a logout.
    NEW.logout_seq := OLD.logout_seq;
    NEW.logout_version := OLD.logout_version;
    NEW.logout_at := OLD.logout_at;
    NEW.keep_key := OLD.keep_key;
  ELSE
    NEW.logout_seq := 0;
    NEW.keep_key := NULL;
  END IF;
  NEW.updated_at := clock_timestamp();
  NEW.changed_xid := pg_current_xact_id();
  RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION session_user_version_notify() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
  -- The same payload for every change, so PostgreSQL folds all the changes of
  -- one transaction into one notification; listeners read what changed.
  IF (SELECT user_notify FROM session_refresh_state) THEN
    PERFORM pg_notify(session_refresh_channel(), 'users');
  END IF;
  RETURN NULL;
END
$$;

-- A switch between notify and poll (session-refresh user-changes) is itself
-- notified: instances in notify mode do not poll, and would otherwise learn of
-- the switch only at their next pollInterval, missing the changes meanwhile.
CREATE OR REPLACE FUNCTION session_refresh_mode_notify() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
  IF NEW.user_notify IS DISTINCT FROM OLD.user_notify THEN
    PERFORM pg_notify(session_refresh_channel(), 'users');
  END IF;
  RETURN NULL;
END
$$;

-- Rows deleted or truncated: instances must forget them, which only a full read shows.
CREATE OR REPLACE FUNCTION session_user_versions_forget() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
  -- A DELETE that removed nothing (a clean-up job with nothing to do) changes nothing.
  -- (Nested: the TRUNCATE trigger has no transition table to plan the query against.)
  IF TG_OP = 'DELETE' THEN
    IF NOT EXISTS (SELECT 1 FROM forgotten) THEN
      RETURN NULL;
    END IF;
  END IF;
  UPDATE session_refresh_state SET users_epoch = session_refresh_next(users_epoch);
  PERFORM pg_notify(session_refresh_channel(), 'users');
  RETURN NULL;
END
$$;

DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'session_version_must_exist' AND tgrelid = 'system_settings'::regclass) THEN
    CREATE TRIGGER session_version_must_exist
      AFTER UPDATE OR DELETE ON system_settings
      FOR EACH STATEMENT EXECUTE FUNCTION session_version_must_exist();
  END IF;
  -- Two triggers: a transition table (to see whether a DELETE removed anything) cannot be had for TRUNCATE.
  IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'session_user_versions_forget' AND tgrelid = 'session_user_versions'::regclass) THEN
    CREATE TRIGGER session_user_versions_forget
      AFTER DELETE ON session_user_versions REFERENCING OLD TABLE AS forgotten
      FOR EACH STATEMENT EXECUTE FUNCTION session_user_versions_forget();
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'session_refresh_mode_notify' AND tgrelid = 'session_refresh_state'::regclass) THEN
    CREATE TRIGGER session_refresh_mode_notify
      AFTER UPDATE OF user_notify ON session_refresh_state
      FOR EACH ROW EXECUTE FUNCTION session_refresh_mode_notify();
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'session_user_versions_truncated' AND tgrelid = 'session_user_versions'::regclass) THEN
    CREATE TRIGGER session_user_versions_truncated
      AFTER TRUNCATE ON session_user_versions
      FOR EACH STATEMENT EXECUTE FUNCTION session_user_versions_forget();
  END IF;
END
$$;

-- Records one change of a user: a refresh, or a logout when p_logout. Returns the
-- user's new version and logout clock, and whether the logout kept a session.
--
-- A logout may keep one session (a password change keeps the session that made
-- it): the one whose login key hashes to p_keep, which authenticated at logout
-- clock p_since and has held the ids p_held since. It is kept only if no logout
-- ended it already, here in the table, whatever the calling instance has read:
-- none of its ids was logged out after p_since, but by a logout that kept it.
CREATE OR REPLACE FUNCTION session_change_user(p_user_id TEXT, p_logout BOOLEAN, p_keep TEXT, p_since BIGINT, p_held TEXT[])
RETURNS TABLE (version BIGINT, logout_seq BIGINT, kept BOOLEAN)
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
#variable_conflict use_column
DECLARE
  v_keep TEXT := CASE WHEN p_logout THEN p_keep END;
BEGIN
  IF p_logout THEN
    -- Every logout takes this row's lock for the logout clock (the trigger does):
    -- once it is held, every logout committed before this one is seen by the
    -- next statement. Taken before the user's row (the trigger would take it
    -- after), so two logouts of one user cannot deadlock. (A transaction that
    -- refreshes this user and then logs another out takes them the other way;
    -- PostgreSQL aborts one of the two, and logoutUser tries once more.)
    PERFORM 1 FROM session_refresh_state FOR UPDATE;
  END IF;
  IF v_keep IS NOT NULL THEN
    IF p_since IS NULL OR EXISTS (
      SELECT 1 FROM session_user_versions u
      WHERE u.user_id = ANY (array_append(coalesce(p_held, '{}'), p_user_id))
        AND u.logout_seq > p_since AND u.keep_key IS DISTINCT FROM v_keep
    ) THEN
      v_keep := NULL;
    END IF;
  END IF;
  -- Read by the trigger for this statement only: the function's SET clause
  -- restores every setting made inside it when it returns.
  PERFORM set_config('session_refresh.keep', coalesce(v_keep, ''), true);
  RETURN QUERY
    INSERT INTO session_user_versions AS s (user_id, logout) VALUES (p_user_id, p_logout)
    ON CONFLICT (user_id) DO UPDATE SET version = s.version + 1, logout = p_logout
    RETURNING s.version, s.logout_seq, v_keep IS NOT NULL;
END
$$;

CREATE OR REPLACE FUNCTION session_change_user(p_user_id TEXT, p_logout BOOLEAN) RETURNS BIGINT
LANGUAGE sql SECURITY DEFINER SET search_path FROM CURRENT AS $$
  SELECT version FROM session_change_user(p_user_id, p_logout, NULL, NULL, NULL)
$$;

CREATE OR REPLACE FUNCTION session_refresh_user(p_user_id TEXT) RETURNS BIGINT
LANGUAGE sql SECURITY DEFINER SET search_path FROM CURRENT AS $$ SELECT session_change_user(p_user_id, false) $$;

CREATE OR REPLACE FUNCTION session_logout_user(p_user_id TEXT) RETURNS BIGINT
LANGUAGE sql SECURITY DEFINER SET search_path FROM CURRENT AS $$ SELECT session_change_user(p_user_id, true) $$;

-- The functions that write run with their owner's rights: only roles granted
-- EXECUTE may call them (PostgreSQL grants it to PUBLIC by default). The app's
-- role needs: GRANT EXECUTE ON FUNCTION session_change_user(text, boolean, text, bigint, text[]) TO app.
REVOKE EXECUTE ON FUNCTION session_change_user(TEXT, BOOLEAN, TEXT, BIGINT, TEXT[]) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION session_change_user(TEXT, BOOLEAN) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION session_refresh_user(TEXT) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION session_logout_user(TEXT) FROM PUBLIC;
