"""Job configs (`get_config(arg)` files for --config)."""
