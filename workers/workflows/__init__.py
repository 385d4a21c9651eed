"""The workflows this deployment runs. Point CHAINLINE_WORKFLOWS at modules like these."""
