"""Hand-written domain logic, one module per service."""
