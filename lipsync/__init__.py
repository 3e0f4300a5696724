"""The engine behind the scripts: one subpackage per stage.

core/      what every stage shares: errors, atomic files, devices, checkpoints, logging, options
train/     SyncNet and U-Net training (train_328.py, train_syncnet.py)
render/    a trained person speaking new audio (inference_328.py), mouth controls
evaluate/  truth-based and SyncNet scores, checkpoint choice (evaluate_328.py)
"""
