"""Training SyncNet and the 328 U-Net on one person (train_328.py, train_syncnet.py).

    options.py       TrainConfig and the command line of both scripts
    run.py           one whole run: train_unet / train_syncnet
    trainer.py       the Trainer loop: loaders, steps, validation, logs, checkpoints, resume
    unet_task.py     the U-Net objective, held-out L1/PSNR, sample grids
    syncnet_task.py  SyncNet's in-sync vs off-sync pairs, held-out sync accuracy
    distributed.py   torchrun ranks, devices, seeding and random state, peak memory
    pictures.py      samples/epoch_N.png and loss_curve.png
"""
