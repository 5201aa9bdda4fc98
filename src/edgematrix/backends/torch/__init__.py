"""PyTorch backend: a ``torch.nn.Module`` on CUDA (eager, CUDA graph, ``torch.compile``) or CPU."""
