"""Versions of one workflow, `deploy-check`, as successive deploys would ship them.

A test starts a worker on one version, then restarts it on another: each module is what
the workers of one deploy import (never two of them in one process).
"""
