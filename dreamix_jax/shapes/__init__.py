"""The moving-shapes world: renderer, pixel probe, edit scoring, and its benchmarks."""
