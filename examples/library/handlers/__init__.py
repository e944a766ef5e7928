"""Hand-written logic of the library platform, one module per service."""
