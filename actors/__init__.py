"""natib actors."""
