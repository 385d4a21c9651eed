"""One activity attempt, in three steps, each in its own module: `claim` it (Postgres
records it STARTED), `run` the user's function within its deadline, and record its
`outcome` (with the workflow task it wakes) before that deadline."""
