"""Containers: their model, registry and lifecycle, and what runs in them."""
