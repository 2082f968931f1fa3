"""Search algorithms: pure, deterministic functions from (space, history, settings, seed) to assignments."""
