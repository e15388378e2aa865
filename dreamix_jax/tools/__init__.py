"""Command-line tools: weight conversion and other one-off utilities."""
