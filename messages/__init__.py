"""natib messages."""
