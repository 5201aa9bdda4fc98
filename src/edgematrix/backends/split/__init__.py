"""Split models (encoder + heads) as one runner; the manifest that describes them."""
