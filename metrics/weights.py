"""The metric networks' weight files: names, public URLs, published hashes and sources (found and loaded by
model_files/weights.py). No metric ever falls back to random weights."""
from __future__ import annotations

from model_files.weights import WeightFile

LPIPS_ALEXNET = WeightFile(
    "LPIPS", "alexnet-owt-7be5be79.pth", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth", "7be5be79",
    "torchvision's AlexNet ImageNet weights (the LPIPS lin layers ship inside the lpips package)", "--lpips-weights")
FID_INCEPTION = WeightFile(
    "FID", "pt_inception-2015-12-05-6726825d.pth",
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
    "6726825d", "the pytorch-fid release (the TensorFlow FID Inception ported to PyTorch)", "--fid-weights")
ARCFACE_R100 = WeightFile(
    "CSIM", "ms1mv3_arcface_r100.pth", None, None,
    "backbone.pth of ms1mv3_arcface_r100_fp16 in the insightface arcface_torch model zoo "
    "(github.com/deepinsight/insightface/tree/master/recognition/arcface_torch), saved under this name",
    "--arcface-weights")
# The syncnet_python release publishes no hash for this file: the sha256 below is the release's file as mirrors and
# the lip-sync projects that pin it agree on (54,573,114 bytes); load_exactly also checks every tensor's name and shape.
SYNCNET_V2 = WeightFile(
    "SyncScore", "syncnet_v2.model", "https://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model", None,
    "the syncnet_python release (github.com/joonson/syncnet_python, download_model.sh)", "--syncnet-weights",
    sha256="961e8696f888fce4f3f3a6c3d5b3267cf5b343100b238e79b2659bff2c605442")

ALL = (LPIPS_ALEXNET, FID_INCEPTION, ARCFACE_R100, SYNCNET_V2)
