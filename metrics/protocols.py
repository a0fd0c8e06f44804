"""Evaluation protocols: which reference code each Table 1 metric follows (evaluate.py --protocol). The definitions
live here only; scoring reads them, and the report records them (docs/evaluation.md has the table).

- standard: the metrics' own reference packages. CSIM on the face cut from both frames by the real frame's crop
  box, frame t against frame t (metrics/identity.py); FID with scipy.linalg.sqrtm (pytorch-fid).
- iplap: the evaluation code the official IP_LAP README names, the ViCo challenge baseline's `evaluations/`.
  CSIM (arcface_torch/compute_csim.py) on whole frames resized to 112x112, averaged over every (real, generated)
  frame pair of the whole set; FID (compute_fid.py) with piq's Newton-Schulz square root. Its PSNR and SSIM are
  piq's, as standard's; its LMD (face_alignment's 68 points) and its SyncNet pipeline are not switched here:
  see docs/evaluation.md.

The SyncNet pipeline is a separate switch (configs/evaluate.yaml `sync.reference_pipeline`): both protocols'
reference code scores LSE with syncnet_python, whose codec round trips metrics/round_trip.py reproduces.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Protocol:
    """One protocol's definitions: CSIM's framing and pairing, FID's matrix square root, and a line for reports."""

    name: str
    csim_framing: str  # "face": cut by the real frame's crop box; "frame": the whole frame
    csim_pairs: str  # "matched": frame t with frame t; "all": every real frame with every generated frame
    fid_root: str  # a metrics.fid.SQUARE_ROOTS name
    summary: str

    def record(self) -> dict:
        """The definitions as a JSON-ready dict (results.json)."""
        return asdict(self)


PROTOCOLS = {
    "standard": Protocol("standard", "face", "matched", "scipy",
                         "CSIM on face crops, matched frames; FID with scipy's sqrtm (pytorch-fid)"),
    "iplap": Protocol("iplap", "frame", "all", "newton_schulz",
                      "the ViCo baseline's evaluations/ (IP_LAP's README): CSIM on whole frames resized to 112x112, "
                      "mean over all frame pairs; FID with piq's Newton-Schulz square root"),
}
SYNC_PIPELINES = {
    True: "syncnet_python's round trips: frames through MPEG-4 and JPEG at quantiser 2, face crops through "
          "OpenCV's XVID writer and ffmpeg's default JPEG extraction",
    False: "uncompressed face crops",
}
