"""Who is asking: tenants' identities from their tokens (no HTTP here)."""
