"""Benchmarks of zf_jax (not tests): run them with `python -m benchmarks.<name>`."""
