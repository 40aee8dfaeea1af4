"""Data layer: MovieLens registry and download, generic readers, id maps, interactions, splits."""
