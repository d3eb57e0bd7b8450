"""Managed plugins: kept, configured and moved, never run."""
