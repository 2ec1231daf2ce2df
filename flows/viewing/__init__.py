"""Looking at results: publishing tiers read-only over HTTP, Neuroglancer links."""
