"""Talking to the broker: the Celery app's settings, and sending the engine's work.

Both the API (which publishes) and the workers (which also consume) build their Celery
app here, so the reliability rules are written once; nothing here imports `workers/`.
"""
