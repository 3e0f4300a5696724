"""Audio features, one module per encoder (AVE, HuBERT, WeNet): one row per 25 fps video frame.

    extract.py        the one entry point: pick the encoder, run it, write aud_<asr>.npy + .json
    ave.py            AVE: mel windows, the AVE checkpoint reader, encoder, features
    ave_training.py   learning the person's AVE encoder (ave.pth, its writer) from the recording
    hubert.py         HuBERT: two 50 Hz hidden states per frame
    wenet.py          WeNet encoders exported to ONNX (streaming or full utterance)
    fbank.py          the Kaldi log mel filterbank WeNet reads
    segments.py       long audio through a sequence model in overlapping segments
    dataset_audio.py  a dataset's aud.wav cut to exactly one 640-sample stretch per frame
    options.py        the command's options and parser (data_utils/audio_features.py is the script)
"""
