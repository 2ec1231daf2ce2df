"""A lab's own tierflow ops (an example plugin package: see README.md)."""
