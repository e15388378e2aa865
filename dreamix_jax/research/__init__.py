"""Research diagnostics for the demo base (motion direction), kept apart from the product."""
