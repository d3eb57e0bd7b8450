"""Kubernetes pods on hbd's containers (the domain side of the CRI)."""
