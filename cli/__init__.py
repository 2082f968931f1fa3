"""natib cli."""
