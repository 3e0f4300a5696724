"""nn.Modules only: the 328 U-Net, SyncNet and audio encoders."""
