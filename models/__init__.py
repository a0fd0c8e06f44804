"""Networks: the landmark generator (stage 1), the renderer (stage 2), and checkpoint loading."""
from models.checkpoints import load_landmark_generator, load_renderer
from models.landmark_generator import LandmarkGenerator
from models.renderer import Renderer

__all__ = ["LandmarkGenerator", "Renderer", "load_landmark_generator", "load_renderer"]
