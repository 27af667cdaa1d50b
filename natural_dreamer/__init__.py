"""Natural Dreamer: a readable, tested DreamerV3 in PyTorch."""
