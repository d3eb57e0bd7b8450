"""The classic builder: build contexts, Dockerfiles, steps."""
