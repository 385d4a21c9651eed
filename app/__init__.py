"""Chainline: durable workflow executions on Celery and Postgres."""
