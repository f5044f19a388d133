"""Benchmarks stage: what each backend and precision costs on this machine, and what it keeps of the accuracy."""
