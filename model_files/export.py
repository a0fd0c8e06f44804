"""Export a checkpoint as a folder anyone can load and publish: safetensors weights, config.json, a model card.

    python -m model_files.export SOURCE OUT_DIR [--onnx] [--with-discriminator] [--results eval/.../results.json]
        [--push OWNER/REPO [--private]]

SOURCE: a step_*.pt of either stage of this project, an official IP_LAP .pth, or an export (its weights file or its
folder, by path or hf:// reference, model_files/hub.py). OUT_DIR receives:

- landmark_generator.safetensors or renderer.safetensors: the network's weights under this project's names and
  conventions (an official renderer's first layers already take RGB), no pickle, no optimiser; its metadata says
  which network and its constructor arguments, so the file alone loads;
- config.json: the constructor arguments, the source file's name and sha256 (and its hub reference when it came
  from the Hub; never a local path), and the step and training config where the source holds them;
- README.md: a Hugging Face model card (front matter: license, library_name, tags, datasets);
- with --onnx, ONNX models of the network (model_files/onnx_export.py), each checked against torch with onnxruntime;
- with --with-discriminator (a renderer whose source has one: a run's step_*.pt, or an export that carries it),
  discriminator.safetensors, so that the published model can be fine-tuned adversarially (--init reads it back:
  the renderer file's metadata names it and its sha256; model_files/discriminator_files.py). The card says whether it
  is included.

The folder is written whole or not at all. Before it is kept, the export is loaded back and compared with the
source's network: every tensor must be equal. `--push` uploads the folder with huggingface_hub (a token from
HF_TOKEN or `hf auth login`) and prints the pinned reference to load it by; the repository it creates is public
unless --private is given (an existing repository keeps its visibility).
"""
from __future__ import annotations

import argparse
import inspect
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import yaml

from data.errors import InputError, one_line
from model_files import hub
from model_files.checkpoints import (
    EXPORT_FILES,
    EXPORT_FORMAT,
    NETWORKS,
    Checkpoint,
    checkpoint_kind,
    landmark_generator_of,
    read_checkpoint,
    renderer_of,
)
from model_files.model_args import checked_model_args
from models.landmark_generator import LandmarkGenerator
from models.renderer import Renderer

LICENSE = "apache-2.0"  # the official release's and this project's (LICENSE)
TRAINERS = {"landmark_generator": "train_landmark.py", "renderer": "train_render.py"}
OFFICIAL_TRAINERS = {"landmark_generator": "train_landmarks_generator.py", "renderer": "train_video_renderer.py"}
DESCRIPTIONS = {
    "landmark_generator": "the landmark generator of IP_LAP (paper section 3.1): from a window of mel spectrograms, "
                          "the pose landmarks of 5 frames and Nl reference landmark sets, it predicts the jaw and lip "
                          "landmarks (content landmarks) of the 5 frames",
    "renderer": "the renderer of IP_LAP (paper section 3.2): it aligns N reference faces to the target sketches by "
                "motion fields and translates the lower-half-masked target face, the sketches and the audio into the "
                "generated face (RGB, {size}x{size})",
}


def constructor_args(kind: str, checkpoint: Checkpoint) -> dict:
    """Every constructor argument of the network, with the defaults filled in."""
    network = Renderer if kind == "renderer" else LandmarkGenerator
    defaults = {name: p.default for name, p in inspect.signature(network).parameters.items()}
    given = checkpoint.contents.get("model_args") if checkpoint.layout != "official" else None
    return {**defaults, **checked_model_args(kind, given, checkpoint.path)}


def public_reference(source: str | Path) -> dict:
    """What config.json may say of where the source came from: its hub reference; nothing for a local file, whose
    path says only where it lay on the machine that exported it (the name and sha256 identify it)."""
    return {"reference": str(source)} if hub.parse(source).on_hub else {}


def network_of(kind: str, checkpoint: Checkpoint) -> torch.nn.Module:
    return {"landmark_generator": landmark_generator_of, "renderer": renderer_of}[kind](checkpoint)


def training_of(checkpoint: Checkpoint) -> dict:
    """The step (and epoch) and the training config the source records, where it does."""
    contents = checkpoint.contents
    if checkpoint.layout == "official":
        return {"step": contents.get("global_step"), "epoch": contents.get("global_epoch")}
    return {key: contents[key] for key in ("step", "config") if key in contents}


def write_weights(network: torch.nn.Module, kind: str, args: dict, path: Path, metadata: dict | None = None) -> None:
    """The network's state dict as safetensors, with the kind and constructor arguments in its metadata (and
    `metadata`'s entries: the discriminator file's name and sha256)."""
    from safetensors.torch import save_file

    state = {name: tensor.detach().cpu().contiguous() for name, tensor in network.state_dict().items()}
    save_file(state, str(path), metadata={"format": EXPORT_FORMAT, "kind": kind, "model_args": json.dumps(args),
                                          **(metadata or {})})


def write_discriminator_of(source: str | Path, checkpoint: Checkpoint, kind: str, folder: Path) -> tuple[dict, dict]:
    """discriminator.safetensors in `folder`, from the source's discriminator, checked by loading it back; returns
    (what the renderer file's metadata says of it, its constructor arguments). A source without one is a one-line
    error."""
    from model_files.discriminator_files import (
        DISCRIMINATOR_FILE,
        discriminator_of,
        discriminator_state,
        pointer_metadata,
        read_discriminator_file,
        write_discriminator,
    )

    found = discriminator_state(source, checkpoint) if kind == "renderer" else None
    if found is None:
        holds = "an official file" if checkpoint.layout == "official" else f"a {NETWORKS[kind]} checkpoint"
        raise InputError(checkpoint.path, f"holds no discriminator ({holds} without one); --with-discriminator "
                                          "needs a renderer run's step_*.pt or an export that carries one")
    state, args = found
    discriminator = discriminator_of(state, args, checkpoint.path)
    path = folder / DISCRIMINATOR_FILE
    write_discriminator(discriminator, args, path)
    difference = largest_difference(discriminator, discriminator_of(*read_discriminator_file(path), path))
    if difference != 0:
        raise RuntimeError(f"the exported discriminator differs from its source (max abs difference {difference})")
    return pointer_metadata(path), args


def discriminator_note(config: dict) -> list[str]:
    """The model card's paragraph on the discriminator (renderers only)."""
    if config["kind"] != "renderer":
        return []
    found = config.get("discriminator")
    if found:
        return [f"`{found['file']}` holds the discriminator trained with it (sha256 `{found['sha256']}`), so that "
                "the renderer can be fine-tuned adversarially: `python train_render.py --init` with this repository's "
                "reference loads both.", ""]
    return ["The discriminator is not included: fine-tuning from this export (`python train_render.py --init`) "
            "starts a fresh discriminator.", ""]


def largest_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    """Max abs difference over every tensor of two networks' state dicts (inf when their names or shapes differ)."""
    first, second = a.state_dict(), b.state_dict()
    if first.keys() != second.keys() or any(first[k].shape != second[k].shape for k in first):
        return float("inf")
    return max(((first[k].double() - second[k].double()).abs().max().item() for k in first if first[k].numel()),
               default=0.0)


def model_card(kind: str, config: dict, results: list[dict], repo: str | None, datasets: list[str]) -> str:
    """A Hugging Face model card: YAML front matter, then what the network is, how to load it, how it was trained,
    and the Table 1 rows of each results.json."""
    front = {"license": LICENSE, "library_name": "pytorch", "datasets": datasets,
             "tags": ["talking-face", "lip-sync", "ip-lap", "safetensors", kind.replace("_", "-")]}
    file, repo = EXPORT_FILES[kind], repo or "OWNER/REPO"
    option = {"landmark_generator": "--landmark-ckpt", "renderer": "--renderer-ckpt"}[kind]
    loader = {"landmark_generator": "load_landmark_generator", "renderer": "load_renderer"}[kind]
    source = config["source"]
    description = DESCRIPTIONS[kind].format(size=config["model_args"].get("face_size"))  # the renderer's real size
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
             f"# IP_LAP {NETWORKS[kind]}", "",
             f"This is {description}. It implements \"Identity-Preserving Talking Face Generation with "
             "Landmark and Appearance Priors\" (Zhong et al., CVPR 2023) and is loaded by the PyTorch code of "
             "the IP_LAP reimplementation this card was exported with (model_files/export.py).", "",
             f"`{file}` holds the weights (safetensors, no pickle); `config.json` the constructor arguments, the "
             "source checkpoint's name and sha256, and its training step and config.", "",
             *discriminator_note(config),
             "## Load it", "",
             "Pin a revision (the commit hash shown on the repository's page) so that results stay reproducible:",
             "", "```bash",
             "python inference.py --video TEMPLATE.mp4 --audio SPEECH.wav --output dub.mp4 \\",
             f"    {option} hf://{repo}@REVISION/{file}", "```", "", "```python",
             f"from model_files import {loader}", "",
             f"network = {loader}(\"hf://{repo}@REVISION/{file}\", device=\"cpu\")", "```", "",
             "The loader checks every tensor's name and shape and prints the sha256 of the file it loaded; append "
             "`#sha256=HEX` to the reference to have it refuse any other file.", "",
             "## Training", ""]
    training = config.get("training", {})
    if source["layout"] == "official":
        lines.append(f"Converted from the official IP_LAP checkpoint `{source['name']}` (sha256 `{source['sha256']}`"
                     f"), trained by the paper's authors with the official release's `{OFFICIAL_TRAINERS[kind]}` on "
                     f"LRS2 (github.com/Weizhi-Zhong/IP_LAP); step {training.get('step')}. The renderer's first "
                     "layers were flipped from BGR to RGB inputs, which gives the same network on RGB images.")
    else:
        lines.append(f"Exported from `{source['name']}` (sha256 `{source['sha256']}`), step "
                     f"{training.get('step', 'not recorded')}.")
        if "config" in training:
            lines += ["", "Trained with this project:", "", "```bash",
                      f"python {TRAINERS[kind]} --config config.yaml", "```", "", "where `config.yaml` was:", "",
                      "```yaml", yaml.safe_dump(training["config"], sort_keys=False).strip(), "```"]
    for result in results:
        lines += ["", f"## Results: {result['title']}", "", result["table"].strip()]
    lines += ["", "## License and citation", "",
              "Apache-2.0, as the official release. Please cite the paper:", "", "```bibtex",
              "@InProceedings{Zhong_2023_CVPR,",
              "    author    = {Zhong, Weizhi and Fang, Chaowei and Cai, Yinqi and Wei, Pengxu and Zhao, Gangming "
              "and Lin, Liang and Li, Guanbin},",
              "    title     = {Identity-Preserving Talking Face Generation With Landmark and Appearance Priors},",
              "    booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition "
              "(CVPR)},", "    year      = {2023},", "    pages     = {9729-9738}", "}", "```", ""]
    return "\n".join(lines)


def read_results(path: Path) -> dict:
    """The Table 1 rows of an evaluate.py results.json (the Markdown evaluate.py wrote, in the file or in the
    table.md beside it), with a title."""
    try:
        results = json.loads(Path(path).read_text())
        settings = results.get("settings") or {}
        table = results.get("table")
        if table is None and Path(path).with_name("table.md").is_file():  # written before results.json held it
            table = Path(path).with_name("table.md").read_text()
    except (OSError, ValueError, AttributeError) as error:
        raise InputError(path, f"not an evaluate.py results.json ({one_line(error)[:120]})") from None
    if not isinstance(table, str) or not isinstance(settings, dict):
        raise InputError(path, "not an evaluate.py results.json (no Markdown table, in it or in table.md beside it)")
    title = " ".join(str(settings[key]) for key in ("setting", "filelist") if settings.get(key)) or Path(path).name
    return {"title": title, "table": table}


def export(source: str | Path, out_dir: Path, onnx: bool = False, results: list[Path] = (),
           repo: str | None = None, datasets: list[str] | None = None, with_discriminator: bool = False) -> Path:
    """Write the export of `source` into `out_dir` (whole or not at all); returns the weights file. With
    `with_discriminator`, the source's discriminator too (a one-line error when it has none)."""
    checkpoint = read_checkpoint(source, None)
    kind = checkpoint_kind(checkpoint.contents)
    if kind not in NETWORKS:
        raise InputError(checkpoint.path, "holds neither a landmark generator nor a renderer")
    network = network_of(kind, checkpoint).eval()
    args = constructor_args(kind, checkpoint)
    tables = [read_results(path) for path in results]
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError(out_dir, "exists and is not an empty folder; give a new one")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        weights = staging / EXPORT_FILES[kind]
        pointer, discriminator_args = (write_discriminator_of(source, checkpoint, kind, staging)
                                       if with_discriminator else ({}, None))
        write_weights(network, kind, args, weights, pointer)
        loaded = read_checkpoint(weights, kind)
        difference = largest_difference(network, network_of(kind, loaded))
        if difference != 0:
            raise RuntimeError(f"the export differs from its source (max abs difference {difference})")
        print(f"{weights.name}: loads back equal to the source's network (max abs difference 0)", file=sys.stderr)
        config = {"kind": kind, "model_args": args, "file": weights.name, "sha256": loaded.sha256,
                  "source": {"name": checkpoint.path.name, "sha256": checkpoint.sha256, "layout": checkpoint.layout,
                             **public_reference(source)},
                  "training": training_of(checkpoint)}
        if pointer:
            config["discriminator"] = {"file": pointer["discriminator"], "sha256": pointer["discriminator_sha256"],
                                       "model_args": discriminator_args}
        (staging / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
        card = model_card(kind, config, tables, repo, datasets or ["lrs2"])
        (staging / "README.md").write_text(card)
        if onnx:
            from model_files.onnx_export import export_onnx

            export_onnx(kind, network, staging)
        for file in staging.iterdir():  # mkstemp-style modes (0600) would keep the files from other users
            file.chmod(0o644)
        staging.chmod(0o755)
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir / weights.name


def push(out_dir: Path, repo: str, private: bool = False) -> str:
    """Upload the export folder to the Hub model repository `repo` (created if needed, public unless `private`; an
    existing one keeps its visibility); returns the commit hash."""
    from huggingface_hub import HfApi
    from huggingface_hub import errors as hub_errors

    api = HfApi()
    try:
        api.create_repo(repo, exist_ok=True, private=private)
        commit = api.upload_folder(repo_id=repo, folder_path=out_dir, commit_message=f"Export of {out_dir.name}")
    except (hub_errors.HfHubHTTPError, OSError, ValueError) as error:
        raise InputError(repo, f"upload failed ({one_line(error)[:200]}); the export stays in {out_dir}") from None
    return commit.oid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model_files.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="exit status: 0 when the export was written (and pushed); 2 for bad input "
                                            "or a failed upload, in one line, with no partial folder")
    parser.add_argument("source", help="step_*.pt of this project, an official .pth, or an export; a path or hf://")
    parser.add_argument("out_dir", type=Path, help="the folder to write (new or empty)")
    parser.add_argument("--onnx", action="store_true", help="also write ONNX models, checked with onnxruntime")
    parser.add_argument("--with-discriminator", action="store_true",
                        help="also write discriminator.safetensors (a renderer run's step_*.pt or an export that "
                             "has one), for adversarial fine-tuning")
    parser.add_argument("--results", type=Path, action="append", default=[],
                        help="an evaluate.py results.json whose Table 1 row goes in the model card (repeatable)")
    parser.add_argument("--datasets", nargs="+", help="training datasets for the card's metadata (default: lrs2)")
    parser.add_argument("--push", metavar="OWNER/REPO",
                        help="upload the folder to this Hub model repository (created public unless --private)")
    parser.add_argument("--private", action="store_true",
                        help="with --push, create the repository private (an existing one keeps its visibility)")
    args = parser.parse_args(argv)
    try:
        if args.private and not args.push:
            raise InputError("--private", "applies to the repository --push creates; give --push OWNER/REPO")
        weights = export(args.source, args.out_dir, args.onnx, args.results, args.push, args.datasets,
                         args.with_discriminator)
        print(f"exported to {args.out_dir}")
        if args.push:
            commit = push(args.out_dir, args.push, args.private)
            print(f"pushed: load it with hf://{args.push}@{commit}/{weights.name}")
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
