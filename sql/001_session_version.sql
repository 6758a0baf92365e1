-- The global session version. An ETL raises it with a plain UPDATE; the trigger
-- below checks the value and tells every listening app instance through NOTIFY.
-- Safe to run again: it never touches an existing row's value.

CREATE TABLE IF NOT EXISTS system_settings (
  id          SERIAL PRIMARY KEY,
  key         VARCHAR(100) UNIQUE NOT NULL,
  value       TEXT NOT NULL,
  description TEXT,
  created_at  TIMESTAMPTZ NOT NULL DEFAULT CURRENT_TIMESTAMP,
  updated_at  TIMESTAMPTZ NOT NULL DEFAULT CURRENT_TIMESTAMP
);

-- BEFORE: check and normalise the value, stamp updated_at.
CREATE OR REPLACE FUNCTION session_version_check() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.key <> 'session_version' THEN
    RETURN NEW;
  END IF;
  -- 15 digits keeps the value inside JavaScript's safe integer range.
  IF NEW.value !~ '^[0-9]{1,15}$' THEN
    RAISE EXCEPTION 'session_version must be a non-negative integer, got %', quote_literal(NEW.value)
      USING ERRCODE = 'check_violation',
            HINT = 'Raise it with: UPDATE system_settings SET value = (value::bigint + 1)::text WHERE key = ''session_version''';
  END IF;
  -- Normalise '007' to '7' so the table and the NOTIFY payload always agree.
  NEW.value := (NEW.value::bigint)::text;
  NEW.updated_at := CURRENT_TIMESTAMP;
  RETURN NEW;
END
$$;

-- AFTER: notify only for a row that was really written. A BEFORE trigger would
-- also fire for an INSERT that ON CONFLICT DO NOTHING then skips.
CREATE OR REPLACE FUNCTION session_version_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.key = 'session_version' THEN
    -- Delivered at COMMIT and dropped on ROLLBACK, so a failed ETL changes nothing.
    PERFORM pg_notify('session_version', NEW.value);
  END IF;
  RETURN NULL;
END
$$;

-- Created once: dropping and re-creating a trigger would wait for, and then
-- block, every transaction on the table each time migrate runs.
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'session_version_check' AND tgrelid = 'system_settings'::regclass) THEN
    CREATE TRIGGER session_version_check
      BEFORE INSERT OR UPDATE OF key, value ON system_settings
      FOR EACH ROW EXECUTE FUNCTION session_version_check();
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'session_version_notify' AND tgrelid = 'system_settings'::regclass) THEN
    CREATE TRIGGER session_version_notify
      AFTER INSERT OR UPDATE OF key, value ON system_settings
      FOR EACH ROW EXECUTE FUNCTION session_version_notify();
  END IF;
END
$$;

INSERT INTO system_settings (key, value, description)
VALUES ('session_version', '1', 'Version number incremented after each ETL run')
ON CONFLICT (key) DO NOTHING;
