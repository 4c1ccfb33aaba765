"""A task's life: train it, evaluate and prove it, inspect the checkpoint, pack its masks."""
