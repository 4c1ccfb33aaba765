"""Training one task over several processes (torchrun): sharded batches, all-reduced gradients."""
