"""The engine itself: version, info and events."""
