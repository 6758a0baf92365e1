-- Per-user versions: refresh or log out one user's sessions everywhere.
-- Call session_refresh_user(id) or session_logout_user(id) in any transaction, or
-- UPDATE the table directly (SET version = version + 1, logout = true|false);
-- the trigger NOTIFYs a small payload (never user data). Needs PostgreSQL 13+.

CREATE TABLE IF NOT EXISTS session_user_versions (
  -- Text, so any id type fits; bounded so a NOTIFY payload stays far below 8000 bytes.
  user_id        TEXT PRIMARY KEY CHECK (length(user_id) BETWEEN 1 AND 200),
  -- Only ever rises, so every instance can keep the highest one it has seen.
  version        BIGINT NOT NULL DEFAULT 1 CHECK (version >= 1),
  -- Whether the latest change requires a new login.
  logout         BOOLEAN NOT NULL DEFAULT false,
  -- Sessions stamped before this version must log in again, if the logout was
  -- within one session lifetime. Kept by the trigger, so a later refresh cannot undo it.
  logout_version BIGINT NOT NULL DEFAULT 0,
  logout_at      TIMESTAMPTZ,
  updated_at     TIMESTAMPTZ NOT NULL DEFAULT CURRENT_TIMESTAMP,
  -- The writing transaction, so a catch-up can find every change committed since
  -- its last read, whichever role made it and however long it ran.
  changed_xid    XID8 NOT NULL DEFAULT pg_current_xact_id()
);
CREATE INDEX IF NOT EXISTS session_user_versions_updated_at ON session_user_versions (updated_at);

CREATE OR REPLACE FUNCTION session_user_version_stamp() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'UPDATE' AND NEW.version <= OLD.version THEN
    RAISE EXCEPTION 'session_user_versions.version must rise, got % after %', NEW.version, OLD.version
      USING ERRCODE = 'check_violation',
            HINT = 'Use session_refresh_user(id) or session_logout_user(id), or SET version = version + 1, logout = true|false';
  END IF;
  IF NEW.logout THEN
    NEW.logout_version := NEW.version;
    NEW.logout_at := clock_timestamp();
  ELSIF TG_OP = 'UPDATE' THEN
    NEW.logout_version := OLD.logout_version;
    NEW.logout_at := OLD.logout_at;
  END IF;
  NEW.updated_at := clock_timestamp();
  NEW.changed_xid := pg_current_xact_id();
  RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION session_user_version_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('session_user_version', json_build_object(
    'u', NEW.user_id, 'v', NEW.version, 'l', NEW.logout_version,
    'a', (extract(epoch from NEW.logout_at) * 1000)::bigint)::text);
  RETURN NULL;
END
$$;

-- Created once: dropping and re-creating a trigger would wait for, and then
-- block, every transaction on the table each time migrate runs.
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'session_user_version_stamp' AND tgrelid = 'session_user_versions'::regclass) THEN
    CREATE TRIGGER session_user_version_stamp
      BEFORE INSERT OR UPDATE ON session_user_versions
      FOR EACH ROW EXECUTE FUNCTION session_user_version_stamp();
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'session_user_version_notify' AND tgrelid = 'session_user_versions'::regclass) THEN
    CREATE TRIGGER session_user_version_notify
      AFTER INSERT OR UPDATE ON session_user_versions
      FOR EACH ROW EXECUTE FUNCTION session_user_version_notify();
  END IF;
END
$$;

-- Records one change of a user: a refresh, or a logout when p_logout. Returns the user's new version.
CREATE OR REPLACE FUNCTION session_change_user(p_user_id TEXT, p_logout BOOLEAN) RETURNS BIGINT
LANGUAGE sql AS $$
  INSERT INTO session_user_versions AS s (user_id, version, logout) VALUES (p_user_id, 1, p_logout)
  ON CONFLICT (user_id) DO UPDATE SET version = s.version + 1, logout = p_logout
  RETURNING version
$$;

-- The user's sessions are refreshed on their next request. Returns the user's new version.
CREATE OR REPLACE FUNCTION session_refresh_user(p_user_id TEXT) RETURNS BIGINT
LANGUAGE sql AS $$ SELECT session_change_user(p_user_id, false) $$;

-- The user's sessions must log in again. Returns the user's new version.
CREATE OR REPLACE FUNCTION session_logout_user(p_user_id TEXT) RETURNS BIGINT
LANGUAGE sql AS $$ SELECT session_change_user(p_user_id, true) $$;
