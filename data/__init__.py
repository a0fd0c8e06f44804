"""Data layer: landmark conventions, the crop rule, sketches, audio, video, FaceMesh and preprocessed records."""
from data.errors import InputError
from data.records import Clip, load_clip

__all__ = ["Clip", "InputError", "load_clip"]
