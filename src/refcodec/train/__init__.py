"""Training: the loop (eq. 1), data, checkpoints, logs and several processes."""
