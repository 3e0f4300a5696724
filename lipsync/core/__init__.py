"""What every stage shares: errors, atomic files, devices, checkpoints, logging, options."""
