-- Revision 0006: a schedule with pause_on_failure pauses when an execution it started
-- fails or times out, in the transaction that closes the run, whoever closes it (a
-- workflow task, the sweeper). The WHEN clause keeps every other run update free.
CREATE OR REPLACE FUNCTION chainline_pause_schedule_on_failure() RETURNS trigger AS $$
BEGIN
    UPDATE schedules s
    SET paused = true,
        note = format('paused on failure: execution %s ended %s', NEW.execution_id, NEW.status),
        updated_at = clock_timestamp()
    FROM executions e
    WHERE e.execution_id = NEW.execution_id
      AND s.schedule_id = e.schedule_id
      AND s.pause_on_failure
      AND NOT s.paused;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER runs_pause_schedule_on_failure
    AFTER UPDATE OF status ON runs
    FOR EACH ROW
    WHEN (NEW.status IN ('FAILED', 'TIMED_OUT') AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION chainline_pause_schedule_on_failure();
