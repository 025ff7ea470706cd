"""One router per resource; all of them behind token authentication."""
