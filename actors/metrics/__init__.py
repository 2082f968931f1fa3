"""natib actors.metrics."""
