"""Training one task: the loop, CUDA-graph steps and resumable snapshots."""
