"""handgrad benchmarks: hand-written training steps against autograd, torch.compile and the matmul
ceiling (run ``python -m benchmarks.suite --help``)."""
