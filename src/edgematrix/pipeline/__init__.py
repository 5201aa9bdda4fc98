"""The cell pipeline: source → build (recipe steps) → evaluate → measure → gate → publish."""
