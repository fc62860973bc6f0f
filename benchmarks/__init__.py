"""Benchmarks of zf_jax (not tests): `python -m benchmarks` runs every workload beside its
peer in one table (see `benchmarks/__main__.py`)."""
