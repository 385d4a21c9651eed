"""The types every layer shares: statuses, activity states, history events, the retry
policy and payload encoding. These modules import nothing else from Chainline but its
errors and settings, so the SDK, storage and the engine can all depend on them."""
