-- Revision 0004: guards that fail with Chainline's own SQLSTATE (CL001, translated to
-- IllegalTransition at the storage boundary), activity states enforced as run statuses
-- are, and Postgres's clock for event timestamps.

-- A run changes only while open, its status only along the transition table.
CREATE OR REPLACE FUNCTION chainline_guard_run_update() RETURNS trigger AS $$
BEGIN
    IF OLD.status NOT IN ('RUNNING', 'RETRYING_AFTER_ERROR') THEN
        RAISE EXCEPTION 'run % is % and can no longer change', OLD.run_id, OLD.status
            USING ERRCODE = 'CL001';
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
        RAISE EXCEPTION 'illegal run status transition % -> %', OLD.status, NEW.status
            USING ERRCODE = 'CL001';
    END IF;
    RETURN NEW;
END
$$ LANGUAGE plpgsql;

-- An activity changes state only along its transition table (app/model/activity_states.py);
-- a final state never changes again.
CREATE FUNCTION chainline_guard_activity_update() RETURNS trigger AS $$
BEGIN
    IF OLD.state NOT IN ('SCHEDULED', 'STARTED', 'BACKING_OFF') THEN
        RAISE EXCEPTION 'activity %/% is % and can no longer change', OLD.run_id, OLD.seq,
            OLD.state USING ERRCODE = 'CL001';
    END IF;
    IF NEW.state IS DISTINCT FROM OLD.state AND NOT EXISTS (
        SELECT 1 FROM (VALUES
            ('SCHEDULED', 'STARTED'),
            ('SCHEDULED', 'ABANDONED'),
            ('STARTED', 'COMPLETED'),
            ('STARTED', 'FAILED'),
            ('STARTED', 'BACKING_OFF'),
            ('STARTED', 'ABANDONED'),
            ('BACKING_OFF', 'STARTED'),
            ('BACKING_OFF', 'ABANDONED')
        ) AS legal(from_state, to_state)
        WHERE legal.from_state = OLD.state AND legal.to_state = NEW.state
    ) THEN
        RAISE EXCEPTION 'illegal activity state transition % -> %', OLD.state, NEW.state
            USING ERRCODE = 'CL001';
    END IF;
    RETURN NEW;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER activities_guard_update BEFORE UPDATE ON activities
FOR EACH ROW EXECUTE FUNCTION chainline_guard_activity_update();

-- Nanoseconds since the epoch, the unit of events.event_timestamp (the SDK's).
CREATE FUNCTION chainline_nanoseconds(moment timestamptz) RETURNS bigint AS $$
    SELECT (extract(epoch FROM moment) * 1000000000)::bigint
$$ LANGUAGE sql IMMUTABLE;
