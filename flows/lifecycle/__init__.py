"""The data-lifecycle flows: ingest (raw folder -> Tier 1 snapshot), promote, retention, track, and
``cluster-check``."""
