"""Everything from a recording to tensors: video, landmarks, crop geometry, time base,
dataset layout, audio, the audio-feature encoders (features/) and the datasets."""
