"""Dubbing: a template video (or photo) and a driving audio -> a talking-face video (paper sections 3.2 and 4).

One module per stage a frame passes through:
- template: pass 1 (FaceMesh once per frame at the dubbing rate) and the choice of reference frames;
- faces: every face linked into tracks, the face to dub chosen (`--face`) and followed across cuts (identity:
  dlib's face descriptor; active_speaker: `auto`, the face whose lips move with the template's sound; chooser: the
  first frame's faces numbered, for a page to click);
- cache: pass 1's result kept on disk for the next run on the same template;
- frames: the template's frames for pass 2, decoded or read back from a spool;
- prepare: per batch, the landmark generator's inputs, the target sketches, face crops and audio windows;
- network: both networks, the references encoded once, a batch predicted and rendered;
- paste: the generated face blended back into its frame (mask: its hull and blur in torch);
- writer: encoding and muxing;
- pipeline: `prepare_template`, `dub`, `dub_prepared`, and the stages run overlapped (overlap) or in series;
- speakers: `dub_speakers`, several faces each with its own audio into one output;
- progress: each stage's bar and the report hook through which a caller follows (or cancels) a dub;
- live, idle: a prepared template dubbed live with streamed audio, and its idle loop (docs/live.md); live_server
  and live_client: live.py's WebSocket server and its client.

The output's frame rate (`output.fps`, `dubbing_rate`): the template's own for a constant-rate video up to 60 fps,
else 25 fps, or a rate the config names. The networks keep their 25 fps semantics at any rate (docs/method.md,
section 5).
"""
from dubbing.network import Models, load_models, render_faces
from dubbing.pipeline import DubResult, Prepared, default_config, dub, dub_prepared, prepare_template, summary

__all__ = ["DubResult", "Models", "Prepared", "default_config", "dub", "dub_prepared", "load_models",
           "prepare_template", "render_faces", "summary"]
