"""Flows of tierflow and its command line: the composition root.

Flows read configuration, build stores, databases and task runners, and wire tasks.
Importing this package is cheap: Prefect is imported only by the modules that need it.
"""
