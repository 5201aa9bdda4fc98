"""Training and fine-tuning loops: seeded, with progress bars, cached by content hash."""
