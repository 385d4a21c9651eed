"""Postgres storage: the schema, the engine, and the queries the engine and API run."""
