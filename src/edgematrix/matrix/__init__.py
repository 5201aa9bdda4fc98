"""Matrix as data: TOML loaded and validated into cells (target x model x recipe)."""
