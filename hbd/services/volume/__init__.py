"""Named and anonymous volumes."""
