"""Where a checkpoint or weight file named by the user is: a local path, or a file on the Hugging Face Hub.

Every option and config key that names such a file takes a reference:

    checkpoints/renderer_checkpoint.pth                          a local path
    hf://OWNER/REPO@REVISION/renderer.safetensors               a file of a Hub model repository, at a revision
    hf://OWNER/REPO/renderer.safetensors                         the same at the default branch (main)
    hf://datasets/OWNER/REPO@REVISION/PATH                       a file of a dataset repository

`hf://` is the file-system form of `huggingface_hub` (HfFileSystem); a revision holding '/' is written with %2F
(refs%2Fpr%2F1). Either kind may end in `#sha256=HEX` (64 hex digits), checked before the file is used. A hub
file is downloaded by `huggingface_hub` into its own cache (HF_HOME, HF_HUB_CACHE), with that library's progress
bar, honouring HF_ENDPOINT (a mirror), HF_HUB_OFFLINE (cache only) and its tokens (HF_TOKEN, `hf auth login`) as
it does everywhere. A revision pinned to a commit hash is what keeps a result reproducible: the file cannot change
under it, and once cached it is served without asking the Hub.

    python -m model_files.hub REFERENCE [REFERENCE ...]    # fetch into the cache (say, on a login node) and print paths
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from data.errors import InputError, one_line
from data.samples import sha256

HF_SCHEME = "hf://"
HASH_MARK = "#sha256="
REPO_TYPES = {"datasets": "dataset", "spaces": "space"}  # hf:// prefixes of repositories other than models
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Reference:
    """A parsed reference. `text` is as the user wrote it (errors name it); `sha256` the expected digest, if any.
    A hub reference has `repo_id`, `repo_type`, `revision` (None: the default branch) and `path` in the repository
    ('' for its root); a local one has `local`."""

    text: str
    sha256: str | None = None
    local: Path | None = None
    repo_id: str = ""
    repo_type: str = "model"
    revision: str | None = None
    path: str = ""

    @property
    def on_hub(self) -> bool:
        return self.local is None

    def names_folder(self) -> bool:
        """Whether it names a folder: a local directory, or a hub path that is empty, ends in '/' or whose last
        part has no suffix (a hub path is not listed to find out)."""
        if not self.on_hub:
            return self.local.is_dir()
        last = self.path.rstrip("/").rpartition("/")[2]
        return not self.path or self.path.endswith("/") or "." not in last

    def inside(self, name: str) -> Reference:
        """The file `name` inside the folder this reference names (the expected digest is the file's)."""
        if not self.on_hub:
            return Reference(self.text, self.sha256, self.local / name)
        path = f"{self.path.rstrip('/')}/{name}".lstrip("/")
        return Reference(self.text, self.sha256, None, self.repo_id, self.repo_type, self.revision, path)


def parse(reference: str | Path) -> Reference:
    """A reference from its text: a local path or hf://[datasets/|spaces/]OWNER/REPO[@REVISION][/PATH], either
    with an optional #sha256=HEX."""
    text = str(reference)
    location, mark, digest = text.partition(HASH_MARK)
    if mark:
        digest = digest.strip().lower()
        if not _HEX64.fullmatch(digest):
            raise InputError(text, "the part after #sha256= must be 64 hexadecimal digits")
    sha256 = digest if mark else None
    if not location.startswith(HF_SCHEME):
        return Reference(text, sha256, Path(location).expanduser())
    parts = location[len(HF_SCHEME):].split("/")
    repo_type = REPO_TYPES.get(parts[0], "model")
    if parts[0] in REPO_TYPES:
        parts = parts[1:]
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise InputError(text, "a hub reference is hf://OWNER/REPO[@REVISION]/PATH")
    name, at, revision = parts[1].partition("@")
    if at and not revision:
        raise InputError(text, "nothing after '@': give a revision (a commit hash, branch or tag) or drop the '@'")
    return Reference(text, sha256, None, f"{parts[0]}/{name}", repo_type, unquote(revision) if at else None,
                     "/".join(parts[2:]))


def resolve(reference: str | Path | Reference, what: str, inside: str | None = None, hint: str = "",
            require_sha256: bool = False) -> Path:
    """The local file a reference names, downloaded into the Hugging Face cache when it is on the Hub, its sha256
    checked when the reference gives one. `inside`: the file to take when the reference names a folder. `what`
    names the file in errors ('renderer checkpoint'); `hint` says where to get it. require_sha256: a reference
    without #sha256=HEX is refused before anything is read or fetched. Every failure is a one-line InputError
    naming the reference; a hub file that fails its sha256 is removed from the cache."""
    ref = reference if isinstance(reference, Reference) else parse(reference)
    if require_sha256 and ref.sha256 is None:
        raise InputError(ref.text, f"{what} reference has no {HASH_MARK}HEX, and hashes are required "
                                   "(checkpoints.require_sha256, --require-hash)")
    if inside is not None and ref.names_folder():
        ref = ref.inside(inside)
    if not ref.on_hub:
        if not ref.local.is_file():
            where = f" in the folder {ref.local.parent}" if inside and ref.local.name == inside else ""
            raise InputError(ref.local, f"{what} not found{where}" + (f"; {hint}" if hint else ""))
        path = ref.local
    else:
        path = _download(ref, what)
    if ref.sha256 is not None:
        found = sha256(path)
        if found != ref.sha256:
            if ref.on_hub:
                _forget(path)
            kept = "removed from the Hugging Face cache" if ref.on_hub else "not loaded"
            raise InputError(ref.text, f"{what} has sha256 {found}, not the {ref.sha256} the reference gives; "
                                       f"{kept}")
    return path


def _download(ref: Reference, what: str) -> Path:
    """The hub file in the local cache (downloaded unless there), or a one-line InputError saying why not."""
    try:
        from huggingface_hub import constants, hf_hub_download
        from huggingface_hub import errors as hub
    except ImportError:
        raise InputError(ref.text, "hub references need huggingface_hub (pip install -r requirements.txt)") from None
    at = f" at revision {ref.revision}" if ref.revision else ""
    try:
        return Path(hf_hub_download(ref.repo_id, ref.path, repo_type=ref.repo_type, revision=ref.revision))
    except hub.GatedRepoError:
        problem = (f"{ref.repo_id} is a gated repository: accept its terms on its Hub page, then give a token "
                   "(HF_TOKEN, or `hf auth login`)")
    except hub.RepositoryNotFoundError:
        problem = (f"no repository {ref.repo_id} on {constants.ENDPOINT} (or it is private: give a token with "
                   "HF_TOKEN or `hf auth login`)")
    except hub.RevisionNotFoundError:
        problem = f"{ref.repo_id} has no revision {ref.revision}"
    except hub.LocalEntryNotFoundError:
        reason = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else f"{constants.ENDPOINT} cannot be reached"
        problem = f"{what} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {reason}"
    except hub.EntryNotFoundError:
        problem = f"{ref.repo_id} has no file {ref.path or '(empty path)'}{at}"
    except hub.HFValidationError as error:
        problem = f"not a valid hub reference ({one_line(error)[:160]})"
    except (hub.HfHubHTTPError, OSError, ValueError) as error:  # a server error, a full cache disk, a bad endpoint
        problem = f"{what} could not be fetched ({one_line(error)[:200]})"
    raise InputError(ref.text, problem)


def _forget(path: Path) -> None:
    """Remove a cached hub file: its snapshot entry and the blob it points to, so no later call serves it."""
    blob = path.resolve()
    path.unlink(missing_ok=True)
    blob.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    """Fetch each reference (into the Hugging Face cache when it is on the Hub); print its path and sha256, or one
    line saying why not."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="exit status: 0 when every file is there; 2 when one is not (one line "
                                            "each, the others still fetched)")
    parser.add_argument("references", nargs="+", help="local paths or hf://OWNER/REPO[@REVISION]/PATH, each "
                                                      "optionally ending in #sha256=HEX")
    args = parser.parse_args(argv)
    failed = 0
    for reference in args.references:
        try:
            path = resolve(reference, "file")
            print(f"{path}\tsha256 {sha256(path)}", flush=True)
        except InputError as error:
            print(f"error: {error}", file=sys.stderr, flush=True)
            failed += 1
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
