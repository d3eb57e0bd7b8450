"""Small command-line tools beside the daemon."""
