"""Training SyncNet and the 328 U-Net on one person (train_328.py, train_syncnet.py)."""
