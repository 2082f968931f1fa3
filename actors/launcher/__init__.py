"""natib actors.launcher."""
