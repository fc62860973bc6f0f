"""Benchmarks of zf_jax (not tests): `python -m benchmarks` runs every workload beside its
peer in one table; `python -m benchmarks.<name>` runs one study (training, analysis)."""
