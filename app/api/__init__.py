"""The HTTP API, wire-compatible with Mistral's Workflows API."""
