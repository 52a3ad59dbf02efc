"""Model bundles, the tiny-model writer, downloads and safe pickle conversion."""
