-- Every statement Chainline sends to Postgres, each a named block with a line saying
-- what it does (loaded once by queries.py, run by name). Times come from Postgres's
-- clock (clock_timestamp()), never from a host's: hosts' clocks disagree.

-- name: insert_execution
-- Record a new execution, its first run (RUNNING, due for its first workflow task)
-- and WORKFLOW_EXECUTION_STARTED; returns the run's start time, or no row if the id is
-- taken (then nothing is written). `schedule_id` names the schedule starting it, if
-- any; an execution that continues another (continue-as-new) or a child names its root,
-- parent and predecessor, and a fresh one is its own root and the first of its chain.
WITH execution AS (
    INSERT INTO executions (execution_id, workflow_name, input, root_execution_id,
                            parent_execution_id, current_run_id, user_id, schedule_id,
                            search_keys, continued_from_execution_id,
                            continued_from_run_id, first_execution_run_id, parent_seq,
                            parent_close_policy)
    VALUES (%(execution_id)s, %(workflow_name)s, %(input)s,
            coalesce(%(root_execution_id)s, %(execution_id)s), %(parent_execution_id)s,
            %(run_id)s, %(user_id)s, %(schedule_id)s, %(search_keys)s,
            %(continued_from_execution_id)s, %(continued_from_run_id)s,
            coalesce(%(first_execution_run_id)s, %(run_id)s), %(parent_seq)s,
            %(parent_close_policy)s)
    ON CONFLICT (execution_id) DO NOTHING
    RETURNING execution_id, root_execution_id
), run AS (
    INSERT INTO runs (run_id, execution_id, run_number, workflow_name, root_execution_id,
                      status, start_time, deadline, random_seed, last_event_id,
                      workflow_task_due_at)
    SELECT %(run_id)s, execution.execution_id, 1, %(workflow_name)s,
           execution.root_execution_id, 'RUNNING', clock_timestamp(),
           clock_timestamp() + make_interval(secs => %(execution_timeout_seconds)s),
           %(random_seed)s, 1, clock_timestamp()
    FROM execution
    RETURNING start_time
), started AS (
    INSERT INTO events (run_id, event_id, execution_id, event_type, attributes,
                        event_timestamp)
    SELECT %(run_id)s, 1, %(execution_id)s, 'WORKFLOW_EXECUTION_STARTED', %(attributes)s,
           chainline_nanoseconds(run.start_time)
    FROM run
)
SELECT start_time FROM run;

-- name: read_execution
-- An execution as its latest run shows it.
SELECT e.execution_id, e.workflow_name, e.root_execution_id, e.parent_execution_id,
       e.user_id, r.run_id, r.status, r.start_time, r.end_time, r.result, r.error,
       e.schedule_id, e.search_keys, e.continued_from_execution_id,
       e.continued_as_execution_id, e.continued_from_run_id, e.first_execution_run_id
FROM executions e JOIN runs r ON r.run_id = e.current_run_id
WHERE e.execution_id = %(execution_id)s;

-- name: read_run
-- One run of an execution, as read_execution shows the latest.
SELECT e.execution_id, e.workflow_name, e.root_execution_id, e.parent_execution_id,
       e.user_id, r.run_id, r.status, r.start_time, r.end_time, r.result, r.error,
       e.schedule_id, e.search_keys, e.continued_from_execution_id,
       e.continued_as_execution_id, e.continued_from_run_id, e.first_execution_run_id
FROM runs r JOIN executions e ON e.execution_id = r.execution_id
WHERE r.run_id = %(run_id)s;

-- name: read_events
-- A run's events in order, with what the API shows of each.
SELECT run_id, event_id, execution_id, event_type, attributes, event_timestamp, sequence
FROM events WHERE run_id = %(run_id)s ORDER BY event_id;

-- name: listen_for_closings
-- Be told, on this connection, of every execution's closing: record_step notifies the
-- channel, with the execution id, as the closing commits.
LISTEN chainline_execution_closed;

-- name: listen_for_stream
-- Be told, on this connection, of each batch the stream's sequencer numbers (with the
-- last position it gave).
LISTEN chainline_stream;

-- name: ping
-- Whether Postgres answers.
SELECT 1;

-- name: lock_run
-- Lock a run, the per-execution lock every writer takes first, and read it.
SELECT r.run_id, r.execution_id, e.workflow_name, r.status, r.random_seed,
       r.last_event_id, r.processed_event_id, r.workflow_task_attempt,
       r.root_execution_id, e.user_id, e.parent_execution_id, e.parent_seq
FROM runs r JOIN executions e ON e.execution_id = r.execution_id
WHERE r.run_id = %(run_id)s
FOR UPDATE OF r;

-- name: lock_run_unless_busy
-- Lock a run if no one else holds it (the sweeper's way: a locked run is being
-- worked on, and will be looked at again on the next sweep).
SELECT r.run_id, r.execution_id, e.workflow_name, r.status, r.random_seed,
       r.last_event_id, r.processed_event_id, r.workflow_task_attempt,
       r.root_execution_id, e.user_id, e.parent_execution_id, e.parent_seq
FROM runs r JOIN executions e ON e.execution_id = r.execution_id
WHERE r.run_id = %(run_id)s
FOR UPDATE OF r SKIP LOCKED;

-- name: peek_run
-- Whether a run is open and due for a workflow task, read without a lock: most
-- workflow-task messages that find nothing to do (a chord's callback, its work done
-- inline) learn it here, with no lock and no history read.
SELECT status IN ('RUNNING', 'RETRYING_AFTER_ERROR') AS open,
       workflow_task_due_at IS NOT NULL AS due
FROM runs WHERE run_id = %(run_id)s;

-- name: read_locked_run
-- Sent after lock_run, so read after the lock was granted (nothing in it is stale):
-- Postgres's time, whether the run's deadline has passed, how long until its workflow
-- task is due, whether an activity other than `seq` is retrying, activity `seq` with
-- whether its attempt's deadline has passed, and the history when asked for, with its
-- size as stored (for the history cap).
SELECT clock_timestamp() AS now,
       r.deadline <= clock_timestamp() AS overdue,
       extract(epoch FROM r.workflow_task_due_at - clock_timestamp())::float8
           AS due_in_seconds,
       EXISTS (
           SELECT 1 FROM activities o
           WHERE o.run_id = r.run_id AND o.seq IS DISTINCT FROM %(seq)s::int
             AND o.attempt > 1 AND o.state IN ('SCHEDULED', 'STARTED', 'BACKING_OFF')
       ) AS others_retrying,
       a.seq, a.activity_name, a.state, a.attempt, a.retry_policy,
       a.start_to_close_seconds, a.worker_task_id,
       a.attempt_deadline <= clock_timestamp() AS attempt_late,
       a.heartbeat_deadline <= clock_timestamp() AS heartbeat_late,
       a.heartbeat_details,
       h.history, h.history_bytes
FROM runs r LEFT JOIN activities a ON a.run_id = r.run_id AND a.seq = %(seq)s::int
LEFT JOIN LATERAL (
    SELECT json_agg(json_build_array(e.event_id, e.event_type, e.attributes)
                    ORDER BY e.event_id) AS history,
           sum(pg_column_size(e.attributes))::bigint AS history_bytes
    FROM events e WHERE %(with_history)s::boolean AND e.run_id = r.run_id
) h ON true
WHERE r.run_id = %(run_id)s;

-- name: record_step
-- Everything one step of a run records, in one statement: its events, new activities
-- and activity transitions (each guarded by the states it may come from), the run's
-- counters, status and workflow-task bookkeeping (guarded by the statuses it may come
-- from, and by the last event id the caller read under the lock), the timers it starts
-- and cancels (a closing run cancels all of its own). A guard that fails fails the
-- statement. Returns the task ids of the attempts it stops: those of the activities it
-- abandons, and, closing, every running one.
WITH appended AS (
    INSERT INTO events (run_id, event_id, execution_id, event_type, attributes,
                        event_timestamp, dedup_key)
    SELECT %(run_id)s, e.event_id, %(execution_id)s, e.event_type, e.attributes,
           -- a nanosecond apart within the statement, so that they sort as they happened
           chainline_nanoseconds(statement_timestamp()) + e.event_id - %(expected_last_event_id)s,
           e.dedup_key
    FROM jsonb_to_recordset(%(events)s::jsonb)
         AS e(event_id int, event_type text, attributes jsonb, dedup_key text)
), inserted AS (
    INSERT INTO activities (run_id, seq, activity_name, input, state, retry_policy,
                            start_to_close_seconds, heartbeat_timeout_seconds, scheduled_at)
    SELECT %(run_id)s, n.seq, n.activity_name, n.input, n.state, n.retry_policy,
           n.start_to_close_seconds, n.heartbeat_timeout_seconds, clock_timestamp()
    FROM jsonb_to_recordset(%(new_activities)s::jsonb)
         AS n(seq int, activity_name text, input jsonb, state text, retry_policy jsonb,
              start_to_close_seconds float8, heartbeat_timeout_seconds float8)
), changes AS (
    SELECT * FROM jsonb_to_recordset(%(activity_changes)s::jsonb)
         AS c(seq int, from_states text[], state text, attempt int, retry_in_seconds float8)
), changed AS (
    UPDATE activities AS a
    SET state = c.state,
        attempt = coalesce(c.attempt, a.attempt),
        next_attempt_at = clock_timestamp() + make_interval(secs => c.retry_in_seconds),
        worker_task_id = NULL,
        attempt_deadline = NULL,
        heartbeat_deadline = NULL
    FROM changes c
    WHERE a.run_id = %(run_id)s AND a.seq = c.seq AND a.state = ANY(c.from_states)
    RETURNING a.seq
), stopping AS (
    -- Read before the changes (the statement's snapshot), so with their task ids. An
    -- activity that heartbeats is told by its next heartbeat instead, to clean up.
    SELECT a.worker_task_id FROM activities a
    WHERE %(may_stop)s::boolean AND a.run_id = %(run_id)s AND a.state = 'STARTED'
      AND a.heartbeat_timeout_seconds IS NULL
      AND CASE WHEN a.seq IN (SELECT seq FROM changes)
               THEN (SELECT c.state FROM changes c WHERE c.seq = a.seq) = 'ABANDONED'
               ELSE %(abandon_in_flight)s::boolean END
), abandoned AS (
    UPDATE activities
    SET state = 'ABANDONED', worker_task_id = NULL, attempt_deadline = NULL,
        next_attempt_at = NULL, heartbeat_deadline = NULL
    WHERE %(abandon_in_flight)s::boolean AND run_id = %(run_id)s
      AND state IN ('SCHEDULED', 'STARTED', 'BACKING_OFF')
      AND seq NOT IN (SELECT seq FROM changes)
), timers_started AS (
    INSERT INTO timers (run_id, seq, fire_at, state)
    SELECT %(run_id)s, t.seq, clock_timestamp() + make_interval(secs => t.seconds),
           -- started by a closing step: never to fire
           CASE WHEN %(abandon_in_flight)s::boolean THEN 'CANCELED' ELSE 'PENDING' END
    FROM jsonb_to_recordset(%(new_timers)s::jsonb) AS t(seq int, seconds float8)
), timers_canceled AS (
    UPDATE timers SET state = 'CANCELED'
    WHERE %(may_cancel_timers)s::boolean AND run_id = %(run_id)s AND state = 'PENDING'
      AND (seq = ANY(%(canceled_timers)s::int[]) OR %(abandon_in_flight)s::boolean)
    RETURNING seq
), run AS (
    UPDATE runs
    SET last_event_id = %(last_event_id)s,
        status = %(status)s::text,
        processed_event_id = coalesce(%(processed_event_id)s::int, processed_event_id),
        end_time = CASE WHEN %(closing)s::boolean THEN clock_timestamp() END,
        result = %(result)s::jsonb,
        error = %(error)s::jsonb,
        workflow_task_due_at = CASE %(workflow_task)s::text
            WHEN 'done' THEN NULL
            WHEN 'due' THEN coalesce(workflow_task_due_at, clock_timestamp())
            WHEN 'retry' THEN clock_timestamp() + make_interval(secs => %(retry_in_seconds)s::float8)
            ELSE workflow_task_due_at END,
        workflow_task_attempt = CASE %(workflow_task)s::text
            WHEN 'done' THEN 0
            WHEN 'retry' THEN workflow_task_attempt + 1
            ELSE workflow_task_attempt END
    WHERE run_id = %(run_id)s AND last_event_id = %(expected_last_event_id)s
      AND status = ANY(%(from_statuses)s::text[])
    RETURNING 1
)
SELECT chainline_require(
           (SELECT count(*) FROM run) = 1
           AND (SELECT count(*) FROM changed) = (SELECT count(*) FROM changes)
           AND (SELECT count(*) FROM timers_canceled WHERE seq = ANY(%(canceled_timers)s::int[]))
               = cardinality(%(canceled_timers)s::int[]),
           %(guard_failure)s),
       (SELECT coalesce(array_agg(worker_task_id), '{}') FROM stopping) AS stopped_task_ids,
       CASE WHEN %(closing)s::boolean
            THEN pg_notify('chainline_execution_closed', %(execution_id)s) END;

-- name: claim_attempt
-- Claim an activity's due attempt for a worker's task, in one statement: lock the run
-- (open, within its deadline), move the activity to STARTED with its attempt's
-- deadline, record ACTIVITY_TASK_STARTED. No row back means nothing was claimed.
WITH run AS MATERIALIZED (
    SELECT run_id, execution_id, last_event_id, deadline FROM runs
    WHERE run_id = %(run_id)s AND status IN ('RUNNING', 'RETRYING_AFTER_ERROR')
    FOR UPDATE
), claimed AS (
    UPDATE activities AS a
    SET state = 'STARTED',
        worker_task_id = %(task_id)s,
        attempt_deadline = clock_timestamp() + make_interval(secs => a.start_to_close_seconds),
        next_attempt_at = NULL,
        heartbeat_deadline =
            clock_timestamp() + make_interval(secs => a.heartbeat_timeout_seconds)
    FROM run
    WHERE a.run_id = run.run_id AND a.seq = %(seq)s
      AND a.activity_name = %(activity_name)s
      AND run.deadline > clock_timestamp()
      AND (a.state = 'SCHEDULED'
           OR (a.state = 'BACKING_OFF' AND a.next_attempt_at <= clock_timestamp()))
    RETURNING a.input, a.attempt, a.attempt_deadline
), started AS (
    INSERT INTO events (run_id, event_id, execution_id, event_type, attributes,
                        event_timestamp, dedup_key)
    SELECT run.run_id, run.last_event_id + 1, run.execution_id, 'ACTIVITY_TASK_STARTED',
           jsonb_build_object(
               'task_id', %(event_task_id)s::text,
               'activity_name', %(activity_name)s::text,
               'input', jsonb_build_object('type', 'json', 'value', claimed.input),
               'seq', %(seq)s::int,
               'attempt', claimed.attempt,
               'worker_task_id', %(task_id)s::text),
           chainline_nanoseconds(clock_timestamp()),
           'activity:' || %(seq)s::int || ':attempt:' || claimed.attempt || ':started'
    FROM run, claimed
), bumped AS (
    UPDATE runs SET last_event_id = runs.last_event_id + 1
    FROM run, claimed WHERE runs.run_id = run.run_id
)
SELECT run.execution_id, claimed.input, claimed.attempt,
       extract(epoch FROM claimed.attempt_deadline - clock_timestamp())::float8
           AS seconds_left
FROM run, claimed;

-- name: explain_claim
-- Why claim_attempt claimed nothing: the run's and the activity's state.
SELECT r.status IN ('RUNNING', 'RETRYING_AFTER_ERROR') AS run_open,
       r.deadline <= clock_timestamp() AS run_overdue,
       a.state,
       extract(epoch FROM a.next_attempt_at - clock_timestamp())::float8
           AS next_attempt_in_seconds
FROM runs r LEFT JOIN activities a ON a.run_id = r.run_id AND a.seq = %(seq)s
WHERE r.run_id = %(run_id)s;

-- name: pending_work
-- What a run still waits on, for sending its messages again: its scheduled activities
-- and those due to retry.
SELECT a.seq, a.activity_name, a.start_to_close_seconds,
       greatest(extract(epoch FROM a.next_attempt_at - clock_timestamp()), 0)::float8
           AS countdown
FROM activities a
WHERE a.run_id = %(run_id)s AND a.state IN ('SCHEDULED', 'BACKING_OFF');

-- name: late_heartbeats
-- Running attempts whose last heartbeat is older than their heartbeat timeout.
SELECT run_id, seq FROM activities
WHERE state = 'STARTED' AND heartbeat_deadline <= clock_timestamp()
ORDER BY heartbeat_deadline
LIMIT %(limit)s;

-- name: record_heartbeat
-- A running attempt reports that it is alive, with its details: its heartbeat deadline
-- moves on. No row back: the attempt is no longer current (cancelled, its run closed,
-- or timed out), and is to stop.
UPDATE activities
SET heartbeat_deadline =
        clock_timestamp() + make_interval(secs => heartbeat_timeout_seconds),
    heartbeat_details = %(details)s
WHERE run_id = %(run_id)s AND seq = %(seq)s AND state = 'STARTED'
  AND worker_task_id = %(task_id)s
RETURNING 1;

-- name: overdue_runs
-- Open runs past their deadline, oldest deadline first.
SELECT run_id FROM runs
WHERE status IN ('RUNNING', 'RETRYING_AFTER_ERROR') AND deadline <= clock_timestamp()
ORDER BY deadline
LIMIT %(limit)s;

-- name: late_attempts
-- Running attempts past their start-to-close deadline, oldest first.
SELECT run_id, seq FROM activities
WHERE state = 'STARTED' AND attempt_deadline <= clock_timestamp()
ORDER BY attempt_deadline
LIMIT %(limit)s;

-- name: rearm_stalled_workflow_tasks
-- Runs whose due workflow task has not run for `stalled_seconds` (its message was
-- lost, or never published): due again now, so that one stall is sent once per sweep.
UPDATE runs SET workflow_task_due_at = clock_timestamp()
WHERE run_id IN (
    SELECT run_id FROM runs
    WHERE workflow_task_due_at <= clock_timestamp() - make_interval(secs => %(stalled_seconds)s)
    ORDER BY workflow_task_due_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
RETURNING run_id;

-- name: rearm_stalled_scheduled_activities
-- Activities scheduled `stalled_seconds` ago and never claimed (their message was
-- lost): scheduled again now, and returned to be sent again.
UPDATE activities SET scheduled_at = clock_timestamp()
WHERE (run_id, seq) IN (
    SELECT run_id, seq FROM activities
    WHERE state = 'SCHEDULED'
      AND scheduled_at <= clock_timestamp() - make_interval(secs => %(stalled_seconds)s)
    ORDER BY scheduled_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
RETURNING run_id, seq, activity_name, start_to_close_seconds;

-- name: rearm_stalled_retries
-- Activities whose next attempt fell due `stalled_seconds` ago and was never claimed
-- (its message was lost): due again now, and returned to be sent again.
UPDATE activities SET next_attempt_at = clock_timestamp()
WHERE (run_id, seq) IN (
    SELECT run_id, seq FROM activities
    WHERE state = 'BACKING_OFF'
      AND next_attempt_at <= clock_timestamp() - make_interval(secs => %(stalled_seconds)s)
    ORDER BY next_attempt_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
RETURNING run_id, seq, activity_name, start_to_close_seconds;

-- name: fire_due_timers
-- Fire a batch of due timers, in one statement: for each, record TIMER_FIRED (with how
-- late it fired, by Postgres's clock) and make its run's workflow task due. Runs that
-- someone holds are skipped until the next call. Returns the runs to send a task for.
WITH due AS MATERIALIZED (
    SELECT t.run_id, t.seq, t.fire_at, r.execution_id, r.last_event_id
    FROM timers t JOIN runs r ON r.run_id = t.run_id
    WHERE t.state = 'PENDING' AND t.fire_at <= clock_timestamp()
      AND r.status IN ('RUNNING', 'RETRYING_AFTER_ERROR')
    ORDER BY t.fire_at
    LIMIT %(limit)s
    FOR UPDATE OF t, r SKIP LOCKED
), numbered AS (
    SELECT d.*, d.last_event_id + row_number() OVER (PARTITION BY d.run_id ORDER BY d.seq)
               AS event_id
    FROM due d
), fired AS (
    UPDATE timers AS t SET state = 'FIRED'
    FROM numbered n WHERE t.run_id = n.run_id AND t.seq = n.seq
), appended AS (
    INSERT INTO events (run_id, event_id, execution_id, event_type, attributes,
                        event_timestamp, dedup_key)
    SELECT n.run_id, n.event_id, n.execution_id, 'TIMER_FIRED',
           jsonb_build_object(
               'seq', n.seq,
               'fire_at', n.fire_at,
               'late_seconds', extract(epoch FROM clock_timestamp() - n.fire_at)::float8),
           chainline_nanoseconds(clock_timestamp()),
           'timer:' || n.seq || ':fired'
    FROM numbered n
), bumped AS (
    UPDATE runs AS r
    SET last_event_id = r.last_event_id + c.fired,
        workflow_task_due_at = coalesce(r.workflow_task_due_at, clock_timestamp())
    FROM (SELECT run_id, count(*) AS fired FROM numbered GROUP BY run_id) c
    WHERE r.run_id = c.run_id
    RETURNING r.run_id
)
SELECT run_id FROM bumped;

-- name: read_keyed_event
-- The event that records the fact `dedup_key` names, if any, with the run's status.
SELECT r.status, e.event_type, e.attributes
FROM runs r LEFT JOIN events e ON e.run_id = r.run_id AND e.dedup_key = %(dedup_key)s
WHERE r.run_id = %(run_id)s;

-- name: read_current_run_id
-- The run an execution's signals, updates, cancel and terminate go to: its latest.
SELECT current_run_id FROM executions WHERE execution_id = %(execution_id)s;

-- name: read_random_seed
-- The seed a run's workflow code draws its random values from (replayed by queries).
SELECT random_seed FROM runs WHERE run_id = %(run_id)s;

-- name: database_now
-- Postgres's clock, which every schedule's time is read by (hosts' clocks disagree).
SELECT clock_timestamp();

-- name: insert_schedule
-- Record a new schedule; no row if the id is taken.
INSERT INTO schedules (schedule_id, workflow_name, input, spec, overlap,
                       catchup_window_seconds, pause_on_failure, max_executions,
                       remaining_executions, paused, note, deployment_name, user_id,
                       next_tick, next_fire_at)
VALUES (%(schedule_id)s, %(workflow_name)s, %(input)s, %(spec)s, %(overlap)s,
        %(catchup_window_seconds)s, %(pause_on_failure)s, %(max_executions)s,
        %(remaining_executions)s, %(paused)s, %(note)s, %(deployment_name)s, %(user_id)s,
        %(next_tick)s, %(next_fire_at)s)
ON CONFLICT (schedule_id) DO NOTHING
RETURNING schedule_id;

-- name: read_schedule
-- One schedule, as stored (the columns of ScheduleRow, app/storage/schedules.py).
SELECT schedule_id, workflow_name, input, spec, overlap, catchup_window_seconds,
       pause_on_failure, max_executions, remaining_executions, paused, note,
       deployment_name, user_id, next_tick, next_fire_at, last_execution_id, buffered,
       missed_ticks, last_missed_tick, revision, created_at, updated_at
FROM schedules WHERE schedule_id = %(schedule_id)s;

-- name: lock_schedule
-- One schedule, locked for a change (waiting for beat if it is firing it).
SELECT schedule_id, workflow_name, input, spec, overlap, catchup_window_seconds,
       pause_on_failure, max_executions, remaining_executions, paused, note,
       deployment_name, user_id, next_tick, next_fire_at, last_execution_id, buffered,
       missed_ticks, last_missed_tick, revision, created_at, updated_at
FROM schedules WHERE schedule_id = %(schedule_id)s
FOR UPDATE;

-- name: list_schedules
-- A page of schedules by id, after `after_id`, with the filters the SDK sends (each
-- null means no filter; `search` is a prefix of the workflow name).
SELECT schedule_id, workflow_name, input, spec, overlap, catchup_window_seconds,
       pause_on_failure, max_executions, remaining_executions, paused, note,
       deployment_name, user_id, next_tick, next_fire_at, last_execution_id, buffered,
       missed_ticks, last_missed_tick, revision, created_at, updated_at
FROM schedules
WHERE (%(workflow_name)s::text IS NULL OR workflow_name = %(workflow_name)s)
  AND (%(user_id)s::text IS NULL OR user_id = %(user_id)s)
  AND (%(paused)s::boolean IS NULL OR paused = %(paused)s)
  AND (%(search)s::text IS NULL OR starts_with(workflow_name, %(search)s))
  AND (%(after_id)s::text IS NULL OR schedule_id > %(after_id)s)
ORDER BY schedule_id
LIMIT %(limit)s;

-- name: lock_due_schedules
-- Schedules to fire now: due by Postgres's clock, or holding buffered ticks whose
-- execution has closed. Locked, skipping those another beat holds; each comes with
-- the status of the execution it started last (null if none), and with now.
SELECT s.schedule_id, s.workflow_name, s.input, s.spec, s.overlap,
       s.catchup_window_seconds, s.pause_on_failure, s.max_executions,
       s.remaining_executions, s.paused, s.note, s.deployment_name, s.user_id,
       s.next_tick, s.next_fire_at, s.last_execution_id, s.buffered, s.missed_ticks,
       s.last_missed_tick, s.revision, s.created_at, s.updated_at,
       (SELECT r.status FROM executions e JOIN runs r ON r.run_id = e.current_run_id
        WHERE e.execution_id = s.last_execution_id) AS last_status,
       clock_timestamp() AS now
FROM schedules s
WHERE NOT s.paused
  AND (s.next_fire_at <= clock_timestamp()
       OR (s.buffered > 0 AND NOT EXISTS (
           SELECT 1 FROM executions e JOIN runs r ON r.run_id = e.current_run_id
           WHERE e.execution_id = s.last_execution_id
             AND r.status IN ('RUNNING', 'RETRYING_AFTER_ERROR'))))
ORDER BY s.next_fire_at
LIMIT %(limit)s
FOR UPDATE OF s SKIP LOCKED;

-- name: buffered_ticks
-- A schedule's buffered ticks, oldest first.
SELECT tick FROM schedule_fires
WHERE schedule_id = %(schedule_id)s AND outcome = 'BUFFERED'
ORDER BY tick
LIMIT %(limit)s;

-- name: save_schedule
-- Write a schedule's state back: after beat fires it, or after a change through the API.
UPDATE schedules
SET input = %(input)s, spec = %(spec)s, overlap = %(overlap)s,
    catchup_window_seconds = %(catchup_window_seconds)s,
    pause_on_failure = %(pause_on_failure)s, max_executions = %(max_executions)s,
    remaining_executions = %(remaining_executions)s, paused = %(paused)s, note = %(note)s,
    next_tick = %(next_tick)s, next_fire_at = %(next_fire_at)s,
    last_execution_id = %(last_execution_id)s, buffered = %(buffered)s,
    missed_ticks = %(missed_ticks)s, last_missed_tick = %(last_missed_tick)s,
    revision = %(revision)s,
    updated_at = CASE WHEN %(touched)s::boolean THEN clock_timestamp() ELSE updated_at END
WHERE schedule_id = %(schedule_id)s;

-- name: delete_schedule
-- Delete a schedule and what it fired (the executions it started remain).
DELETE FROM schedules WHERE schedule_id = %(schedule_id)s RETURNING schedule_id;

-- name: record_fire
-- What became of one tick that started nothing (SKIPPED, or BUFFERED to start later).
-- A tick recorded before is left as it was.
INSERT INTO schedule_fires (schedule_id, tick, kind, outcome, detail, recorded_at)
VALUES (%(schedule_id)s, %(tick)s, %(kind)s, %(outcome)s, %(detail)s, clock_timestamp())
ON CONFLICT (schedule_id, tick) DO NOTHING;

-- name: record_start
-- A tick that starts `execution_id` (inserted by insert_execution just before, in the
-- same transaction): STARTED if that insert made the run, FAILED if the id was taken.
-- A tick recorded before keeps its record, unless it was buffered for this start.
INSERT INTO schedule_fires (schedule_id, tick, kind, outcome, execution_id, detail,
                            recorded_at)
SELECT %(schedule_id)s, %(tick)s, %(kind)s,
       CASE WHEN started THEN 'STARTED' ELSE 'FAILED' END, %(execution_id)s,
       CASE WHEN NOT started THEN 'an execution with this id already exists' END,
       clock_timestamp()
FROM (SELECT EXISTS (SELECT 1 FROM runs WHERE run_id = %(run_id)s) AS started) made
ON CONFLICT (schedule_id, tick) DO UPDATE
SET outcome = EXCLUDED.outcome, execution_id = EXCLUDED.execution_id,
    detail = EXCLUDED.detail, recorded_at = EXCLUDED.recorded_at
WHERE schedule_fires.outcome = 'BUFFERED';

-- name: runs_that_exist
-- Which of these runs exist (those a batch of starts did make).
SELECT run_id FROM runs WHERE run_id = ANY(%(run_ids)s);

-- name: recent_starts
-- The executions a schedule started last, newest first.
SELECT f.tick, r.start_time, f.execution_id
FROM schedule_fires f
JOIN executions e ON e.execution_id = f.execution_id
JOIN runs r ON r.execution_id = e.execution_id AND r.run_number = 1
WHERE f.schedule_id = %(schedule_id)s AND f.outcome = 'STARTED'
ORDER BY f.recorded_at DESC
LIMIT %(limit)s;

-- name: start_reset_run
-- A reset's new run, in one statement: the run (RUNNING, due for a workflow task, with
-- the old run's random seed and a fresh execution timeout as long as the old one), the
-- old run's history before the reset point copied as it was (ids, times, dedup keys and
-- writing transactions),
-- the events appended after it, the activities and timers that history left waiting,
-- and the execution pointed at the new run.
WITH old AS (
    SELECT * FROM runs WHERE run_id = %(from_run_id)s
), run AS (
    INSERT INTO runs (run_id, execution_id, run_number, workflow_name, root_execution_id,
                      status, start_time, deadline, random_seed, last_event_id,
                      processed_event_id, workflow_task_due_at, reset_from_run_id,
                      reset_event_id, reset_reason)
    SELECT %(run_id)s, old.execution_id,
           (SELECT max(r.run_number) + 1 FROM runs r WHERE r.execution_id = old.execution_id),
           old.workflow_name, old.root_execution_id, 'RUNNING', clock_timestamp(),
           clock_timestamp() + (old.deadline - old.start_time), old.random_seed,
           %(last_event_id)s, %(processed_event_id)s, clock_timestamp(), old.run_id,
           %(reset_event_id)s, %(reason)s
    FROM old
    RETURNING run_id, execution_id
), kept AS (
    -- With their transaction too: they sort before the stream's cursor, so the stream,
    -- which showed them under the old run, does not show them again.
    INSERT INTO events (run_id, event_id, execution_id, event_type, attributes,
                        event_timestamp, dedup_key, tx_id)
    SELECT run.run_id, e.event_id, e.execution_id, e.event_type, e.attributes,
           e.event_timestamp, e.dedup_key, e.tx_id
    FROM run, events e
    WHERE e.run_id = %(from_run_id)s AND e.event_id < %(reset_event_id)s
), appended AS (
    INSERT INTO events (run_id, event_id, execution_id, event_type, attributes,
                        event_timestamp)
    SELECT run.run_id, a.event_id, run.execution_id, a.event_type, a.attributes,
           chainline_nanoseconds(clock_timestamp()) + a.event_id
    FROM run, jsonb_to_recordset(%(events)s::jsonb)
         AS a(event_id int, event_type text, attributes jsonb)
), waiting_activities AS (
    INSERT INTO activities (run_id, seq, activity_name, input, state, attempt, retry_policy,
                            start_to_close_seconds, heartbeat_timeout_seconds, scheduled_at)
    SELECT run.run_id, a.seq, a.activity_name, a.input, a.state, a.attempt, a.retry_policy,
           a.start_to_close_seconds, a.heartbeat_timeout_seconds, clock_timestamp()
    FROM run, jsonb_to_recordset(%(activities)s::jsonb)
         AS a(seq int, activity_name text, input jsonb, state text, attempt int,
              retry_policy jsonb, start_to_close_seconds float8,
              heartbeat_timeout_seconds float8)
), waiting_timers AS (
    INSERT INTO timers (run_id, seq, fire_at, state)
    SELECT run.run_id, t.seq, t.fire_at, 'PENDING'
    FROM run, timers t
    WHERE t.run_id = %(from_run_id)s AND t.seq = ANY(%(pending_timers)s::int[])
), pointed AS (
    UPDATE executions e SET current_run_id = run.run_id
    FROM run WHERE e.execution_id = run.execution_id
)
SELECT run_id FROM run;

-- name: read_chain
-- What a continuing execution hands its successor: its tree, its caller, and the first
-- run of its chain.
SELECT root_execution_id, parent_execution_id, user_id, first_execution_run_id,
       parent_seq, parent_close_policy
FROM executions WHERE execution_id = %(execution_id)s;

-- name: record_successor
-- Name the execution that continued this one as new.
UPDATE executions SET continued_as_execution_id = %(successor_id)s
WHERE execution_id = %(execution_id)s;

-- name: read_successor
-- The execution that continued this one as new, if any.
SELECT continued_as_execution_id FROM executions WHERE execution_id = %(execution_id)s;

-- name: record_child_outcome
-- A child's outcome, in its parent's current run: only if that run is open, recorded
-- starting this very child (its start command names it), and holds no outcome for it
-- yet (a reset child closing again records nothing). The parent's workflow task becomes
-- due. Returns the parent's run, or no row if nothing was recorded.
WITH parent AS MATERIALIZED (
    SELECT r.run_id, r.execution_id, r.last_event_id
    FROM executions e JOIN runs r ON r.run_id = e.current_run_id
    WHERE e.execution_id = %(parent_execution_id)s
      AND r.status IN ('RUNNING', 'RETRYING_AFTER_ERROR')
    FOR UPDATE OF r
), eligible AS MATERIALIZED (
    SELECT parent.* FROM parent
    WHERE EXISTS (SELECT 1 FROM events s
                  WHERE s.run_id = parent.run_id AND s.dedup_key = %(started_key)s
                    AND s.attributes->>'execution_id' = %(child_execution_id)s)
      AND NOT EXISTS (SELECT 1 FROM events o
                      WHERE o.run_id = parent.run_id AND o.dedup_key = %(outcome_key)s)
), appended AS (
    INSERT INTO events (run_id, event_id, execution_id, event_type, attributes,
                        event_timestamp, dedup_key)
    SELECT eligible.run_id, eligible.last_event_id + 1, eligible.execution_id,
           %(event_type)s, %(attributes)s, chainline_nanoseconds(clock_timestamp()),
           %(outcome_key)s
    FROM eligible
), bumped AS (
    UPDATE runs r
    SET last_event_id = r.last_event_id + 1,
        workflow_task_due_at = coalesce(r.workflow_task_due_at, clock_timestamp())
    FROM eligible WHERE r.run_id = eligible.run_id
    RETURNING r.run_id
)
SELECT run_id FROM bumped;

-- name: children_to_close
-- Open children whose parent's current run has closed, with a close policy that ends
-- them too (the sweeper terminates them or asks them to cancel).
SELECT c.execution_id, c.parent_close_policy
FROM executions c
JOIN runs cr ON cr.run_id = c.current_run_id
JOIN executions p ON p.execution_id = c.parent_execution_id
JOIN runs pr ON pr.run_id = p.current_run_id
WHERE c.parent_close_policy IN ('REQUEST_CANCEL', 'TERMINATE')
  AND cr.status IN ('RUNNING', 'RETRYING_AFTER_ERROR')
  AND pr.status NOT IN ('RUNNING', 'RETRYING_AFTER_ERROR')
LIMIT %(limit)s;

-- name: lock_search_keys
-- An execution's search keys, its row locked until the transaction ends (writers merge
-- their change into what they read).
SELECT search_keys FROM executions WHERE execution_id = %(execution_id)s FOR UPDATE;

-- name: write_search_keys
-- An execution's search keys, as merged (null when none is left).
UPDATE executions SET search_keys = %(search_keys)s WHERE execution_id = %(execution_id)s;

-- name: number_stream_events
-- The sequencer: number the streamed events written by transactions older than every
-- transaction still running, in (tx_id, sequence) order, after the last one it looked
-- at; add what the events it looked at measure to the metric totals; move its cursor
-- past every event it looked at (streamed or not); notify the last position given.
-- Does nothing when another sequencer holds the lock. Returns that position, or null.
-- An attempt's duration runs from its STARTED event to its outcome's, both stamped by
-- Postgres's clock; histogram rows count each bucket alone (`le`: its upper bound).
WITH locked AS MATERIALIZED (
    SELECT pg_try_advisory_xact_lock(%(lock_key)s) AS held
), state AS MATERIALIZED (
    SELECT s.last_tx_id, s.last_sequence, s.last_position,
           pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS horizon
    FROM stream_state s, locked
    WHERE s.id = 1 AND locked.held
), looked AS MATERIALIZED (
    -- `copied`: a reset run's copy of its old run's history (before the reset point),
    -- which keeps its writing transaction: numbered and measured as the original was,
    -- never again, even when the cursor still stands on that transaction.
    SELECT e.run_id, e.event_id, e.tx_id, e.sequence, e.event_type,
           coalesce(e.event_id < r.reset_event_id, false) AS copied
    FROM state, events e
    JOIN runs r ON r.run_id = e.run_id
    WHERE (e.tx_id, e.sequence) > (state.last_tx_id, state.last_sequence)
      AND e.tx_id < state.horizon
    ORDER BY e.tx_id, e.sequence
    LIMIT %(limit)s
), fresh AS MATERIALIZED (
    SELECT l.run_id, l.event_id,
           state.last_position + row_number() OVER (ORDER BY l.tx_id, l.sequence) AS position
    FROM looked l, state
    WHERE l.event_type = ANY(%(streamed)s::text[]) AND NOT l.copied
), numbered AS (
    INSERT INTO stream_events (position, run_id, event_id)
    SELECT position, run_id, event_id FROM fresh
), measured AS MATERIALIZED (
    SELECT l.event_type, r.workflow_name,
           e.attributes->>'activity_name' AS activity_name,
           (e.attributes->>'late_seconds')::float8 AS late_seconds,
           (e.event_timestamp - started.event_timestamp) / 1e9 AS attempt_seconds
    FROM looked l
    JOIN events e ON e.run_id = l.run_id AND e.event_id = l.event_id
    JOIN runs r ON r.run_id = l.run_id
    LEFT JOIN events started
      ON l.event_type = ANY(%(attempt_outcomes)s::text[])
     AND started.run_id = e.run_id
     AND started.dedup_key = 'activity:' || (e.attributes->>'seq') || ':attempt:'
                             || (e.attributes->>'attempt') || ':started'
    WHERE l.event_type = ANY(%(measured)s::text[]) AND NOT l.copied
), observed (metric, labels, value) AS (
    SELECT 'executions_started', jsonb_build_object('workflow', workflow_name), 1::float8
    FROM measured WHERE event_type = 'WORKFLOW_EXECUTION_STARTED'
    UNION ALL
    SELECT 'executions_closed',
           jsonb_build_object('workflow', workflow_name,
                              'status', replace(event_type, 'WORKFLOW_EXECUTION_', '')), 1
    FROM measured WHERE event_type = ANY(%(closings)s::text[])
    UNION ALL
    SELECT 'activity_attempts',
           jsonb_build_object('activity', activity_name,
                              'outcome', lower(replace(event_type, 'ACTIVITY_TASK_', ''))), 1
    FROM measured WHERE attempt_seconds IS NOT NULL
    UNION ALL
    SELECT 'activity_retries', jsonb_build_object('activity', activity_name), 1
    FROM measured WHERE event_type = 'ACTIVITY_TASK_RETRYING'
    UNION ALL
    SELECT 'activity_attempt_seconds_bucket',
           jsonb_build_object('activity', activity_name, 'le', coalesce(
               (SELECT min(b) FROM unnest(%(attempt_buckets)s::float8[]) b
                WHERE b >= attempt_seconds), 'Infinity')::text), 1
    FROM measured WHERE attempt_seconds IS NOT NULL
    UNION ALL
    SELECT 'activity_attempt_seconds_sum', jsonb_build_object('activity', activity_name),
           attempt_seconds
    FROM measured WHERE attempt_seconds IS NOT NULL
    UNION ALL
    SELECT 'timer_lateness_seconds_bucket',
           jsonb_build_object('le', coalesce(
               (SELECT min(b) FROM unnest(%(lateness_buckets)s::float8[]) b
                WHERE b >= late_seconds), 'Infinity')::text), 1
    FROM measured WHERE late_seconds IS NOT NULL
    UNION ALL
    SELECT 'timer_lateness_seconds_sum', '{}'::jsonb, late_seconds
    FROM measured WHERE late_seconds IS NOT NULL
), counted AS (
    INSERT INTO metric_totals (metric, labels, value)
    SELECT metric, labels, sum(value) FROM observed GROUP BY metric, labels
    ON CONFLICT (metric, labels) DO UPDATE SET value = metric_totals.value + excluded.value
), moved AS (
    UPDATE stream_state s
    SET last_tx_id = last_looked.tx_id,
        last_sequence = last_looked.sequence,
        last_position = coalesce((SELECT max(position) FROM fresh), s.last_position)
    FROM (SELECT tx_id, sequence FROM looked ORDER BY tx_id DESC, sequence DESC LIMIT 1)
         AS last_looked
    WHERE s.id = 1
)
SELECT max(position),
       CASE WHEN max(position) IS NOT NULL
            THEN pg_notify('chainline_stream', max(position)::text) END
FROM fresh;

-- name: read_stream
-- Numbered events after a position, in stream order, with what their envelope shows
-- (the execution's workflow, tree and links), narrowed by what is asked (null: any).
SELECT s.position, e.run_id, e.event_id, e.execution_id, e.event_type, e.attributes,
       e.event_timestamp, x.workflow_name, x.root_execution_id, x.parent_execution_id,
       x.schedule_id, x.continued_from_run_id, x.first_execution_run_id
FROM stream_events s
JOIN events e ON e.run_id = s.run_id AND e.event_id = s.event_id
JOIN executions x ON x.execution_id = e.execution_id
WHERE s.position > %(after)s
  AND (%(execution_id)s::text IS NULL OR s.run_id IN (
          SELECT r.run_id FROM runs r WHERE r.execution_id = %(execution_id)s))
  AND (%(root_execution_id)s::text IS NULL OR s.run_id IN (
          SELECT r.run_id FROM runs r WHERE r.root_execution_id = %(root_execution_id)s))
  AND (%(run_id)s::uuid IS NULL OR s.run_id = %(run_id)s)
  AND (%(parent_execution_id)s::text IS NULL
       OR x.parent_execution_id = %(parent_execution_id)s)
  AND (%(workflow_name)s::text IS NULL OR x.workflow_name = %(workflow_name)s)
  AND (%(event_types)s::text[] IS NULL OR e.event_type = ANY(%(event_types)s::text[]))
ORDER BY s.position
LIMIT %(limit)s;

-- name: last_stream_position
-- The last position the sequencer gave (0: none yet).
SELECT last_position FROM stream_state WHERE id = 1;

-- name: read_execution_stream
-- An execution's numbered events (all its runs') after a position, in stream order,
-- with what their envelope shows.
SELECT s.position, e.run_id, e.event_id, e.execution_id, e.event_type, e.attributes,
       e.event_timestamp, x.workflow_name, x.root_execution_id, x.parent_execution_id,
       x.schedule_id, x.continued_from_run_id, x.first_execution_run_id
FROM runs r
JOIN stream_events s ON s.run_id = r.run_id
JOIN events e ON e.run_id = s.run_id AND e.event_id = s.event_id
JOIN executions x ON x.execution_id = r.execution_id
WHERE r.execution_id = %(execution_id)s AND s.position > %(after)s
ORDER BY s.position
LIMIT %(limit)s;

-- name: add_to_metric_totals
-- Add to metric totals, one (metric, labels, amount) per array position.
INSERT INTO metric_totals (metric, labels, value)
SELECT metric, labels, sum(amount)
FROM unnest(%(metrics)s::text[], %(labels)s::jsonb[], %(amounts)s::float8[])
     AS added (metric, labels, amount)
GROUP BY metric, labels
ON CONFLICT (metric, labels) DO UPDATE SET value = metric_totals.value + excluded.value;

-- name: read_metric_totals
-- Every metric total.
SELECT metric, labels, value FROM metric_totals;

-- name: count_open_runs
-- The open runs by status (from the status index alone).
SELECT status, count(*) FROM runs WHERE status = ANY(%(open)s::text[]) GROUP BY status;
