"""Networks: the landmark generator (stage 1) and their checkpoint loading."""
from models.checkpoints import load_landmark_generator
from models.landmark_generator import LandmarkGenerator

__all__ = ["LandmarkGenerator", "load_landmark_generator"]
