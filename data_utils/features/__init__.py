"""Audio features, one module per encoder (AVE, HuBERT, WeNet): one row per 25 fps video frame."""
