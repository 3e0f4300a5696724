"""Everything from a recording to tensors: video, landmarks, crop geometry,
audio features and datasets."""
