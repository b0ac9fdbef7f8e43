"""Weights and published models: weight files at a path (weights), models by name (hub), PyTorch
checkpoints read as untrusted input (pth) and their conversion (conversion), random weights in
the published layouts for tests and benchmarks (random_weights)."""
