"""The execution engine: statuses, retries, replay, and the tasks that advance executions."""
