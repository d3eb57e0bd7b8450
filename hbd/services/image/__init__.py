"""Images: the store, its blobs and layers, references, registries."""
