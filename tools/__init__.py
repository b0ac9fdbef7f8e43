"""Measuring and checking tools: not part of the product (benchmark.py, gpu_check.py, demo.py, ...)."""
