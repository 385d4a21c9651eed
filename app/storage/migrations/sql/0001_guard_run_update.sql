-- Revision 0001: a run changes only while it is open, and its status only along the
-- transition table (app/model/statuses.py, as it stood at this revision).
CREATE OR REPLACE FUNCTION chainline_guard_run_update() RETURNS trigger AS $$
BEGIN
    IF OLD.status NOT IN ('RUNNING', 'RETRYING_AFTER_ERROR') THEN
        RAISE EXCEPTION 'run % is % and can no longer change', OLD.run_id, OLD.status
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.status IS DISTINCT FROM OLD.status AND NOT EXISTS (
        SELECT 1 FROM (VALUES
            ('RUNNING', 'RETRYING_AFTER_ERROR'),
            ('RUNNING', 'COMPLETED'),
            ('RUNNING', 'FAILED'),
            ('RUNNING', 'CANCELED'),
            ('RUNNING', 'TERMINATED'),
            ('RUNNING', 'TIMED_OUT'),
            ('RUNNING', 'CONTINUED_AS_NEW'),
            ('RETRYING_AFTER_ERROR', 'RUNNING'),
            ('RETRYING_AFTER_ERROR', 'FAILED'),
            ('RETRYING_AFTER_ERROR', 'CANCELED'),
            ('RETRYING_AFTER_ERROR', 'TERMINATED'),
            ('RETRYING_AFTER_ERROR', 'TIMED_OUT')
        ) AS legal(from_status, to_status)
        WHERE legal.from_status = OLD.status AND legal.to_status = NEW.status
    ) THEN
        RAISE EXCEPTION 'illegal status transition % -> %', OLD.status, NEW.status
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$ LANGUAGE plpgsql;
