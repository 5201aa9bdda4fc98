"""Shared primitives every layer may use: cache keys, content hashes and verified cache entries."""
