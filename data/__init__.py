"""Data layer: landmark conventions, the crop rule, sketches, audio, video, FaceMesh and preprocessed records.

Nothing is imported here: `import data.errors` must not pull in OpenCV or PyAV (bench/gpu.py runs without them).
"""
