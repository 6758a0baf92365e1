-- Per-user versions: refresh or log out one user's sessions everywhere.
-- Call session_refresh_user(id) or session_logout_user(id) in any transaction,
-- or UPDATE the table directly; the trigger NOTIFYs a small payload (never user data).

CREATE TABLE IF NOT EXISTS session_user_versions (
  -- Text, so any id type fits; bounded so a NOTIFY payload stays far below 8000 bytes.
  user_id        TEXT PRIMARY KEY CHECK (length(user_id) BETWEEN 1 AND 200),
  version        BIGINT NOT NULL DEFAULT 1 CHECK (version >= 0),
  -- Whether the latest change requires a new login.
  logout         BOOLEAN NOT NULL DEFAULT false,
  -- Sessions stamped before this version must log in again. Kept by the trigger,
  -- so a later refresh cannot undo an earlier logout.
  logout_version BIGINT NOT NULL DEFAULT 0,
  updated_at     TIMESTAMPTZ NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX IF NOT EXISTS session_user_versions_updated_at ON session_user_versions (updated_at);

CREATE OR REPLACE FUNCTION session_user_version_stamp() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.logout THEN
    NEW.logout_version := NEW.version;
  ELSIF TG_OP = 'UPDATE' THEN
    NEW.logout_version := GREATEST(NEW.logout_version, OLD.logout_version);
  END IF;
  -- clock_timestamp(), not the transaction's start: the catch-up after a reconnect
  -- reads rows by updated_at, and a long transaction would otherwise date its rows too early.
  NEW.updated_at := clock_timestamp();
  RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION session_user_version_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('session_user_version',
    json_build_object('u', NEW.user_id, 'v', NEW.version, 'l', NEW.logout_version)::text);
  RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS session_user_version_stamp ON session_user_versions;
CREATE TRIGGER session_user_version_stamp
  BEFORE INSERT OR UPDATE ON session_user_versions
  FOR EACH ROW EXECUTE FUNCTION session_user_version_stamp();

DROP TRIGGER IF EXISTS session_user_version_notify ON session_user_versions;
CREATE TRIGGER session_user_version_notify
  AFTER INSERT OR UPDATE ON session_user_versions
  FOR EACH ROW EXECUTE FUNCTION session_user_version_notify();

-- The user's sessions are refreshed on their next request. Returns the user's new version.
CREATE OR REPLACE FUNCTION session_refresh_user(p_user_id TEXT) RETURNS BIGINT
LANGUAGE sql AS $$
  INSERT INTO session_user_versions AS s (user_id, version, logout) VALUES (p_user_id, 1, false)
  ON CONFLICT (user_id) DO UPDATE SET version = s.version + 1, logout = false
  RETURNING version
$$;

-- The user's sessions must log in again. Returns the user's new version.
CREATE OR REPLACE FUNCTION session_logout_user(p_user_id TEXT) RETURNS BIGINT
LANGUAGE sql AS $$
  INSERT INTO session_user_versions AS s (user_id, version, logout) VALUES (p_user_id, 1, true)
  ON CONFLICT (user_id) DO UPDATE SET version = s.version + 1, logout = true
  RETURNING version
$$;
