"""Dataset preparation (the `prepare` stage): sources, decoding, duplicate detection and sharding."""
