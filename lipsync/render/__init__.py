"""Rendering a trained person speaking new audio (inference_328.py), with the mouth controls."""
