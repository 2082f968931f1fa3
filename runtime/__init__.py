"""natib runtime."""
