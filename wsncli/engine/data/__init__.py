"""Task data: the benchmark registry, file readers, deterministic splits and validation."""
