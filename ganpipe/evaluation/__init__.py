"""Features, metrics and the `ref-stats` / `evaluate` stages; results carry their protocol."""
