"""The trainers' command line: --config, --resume, --init, dotted overrides; each way a run ends has its exit
status."""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

from config import REPO, load_config
from data.errors import DISK_STATUS, DiskError, InputError
from training.distributed import teardown
from training.stopping import DIVERGED, EXIT_STATUS, PREEMPTED, Diverged, Preempted, RecordStop


def main(doc: str, train: Callable[[dict, str | None], int], argv: list[str] | None = None,
         base: Path | None = None) -> int:
    """Parse, run train(config, resume) and turn how it ended into one line and an exit status. `base` is the
    trainer's full config, which the --config file is laid over (config.load_config)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=EXIT_STATUS)
    laid_over = f", laid over {base.relative_to(REPO)} (it may hold only the keys it changes)" if base else ""
    parser.add_argument("--config", required=True,
                        help=f"YAML settings{laid_over}; a relative path not found here is looked up in the "
                             "repository")
    parser.add_argument("--resume", help="'auto' (newest checkpoint in run_dir, if any) or a checkpoint path")
    parser.add_argument("--init", metavar="REF",
                        help="start a new run from this model's weights (fine-tuning): an official file, a step_*.pt, "
                             "an export or hf://...; step 0 and fresh optimisers (config init.source; --resume wins "
                             "when run_dir has a checkpoint)")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value, e.g. optim.lr=5e-5 run_dir=runs/x")
    args = parser.parse_intermixed_args(argv)
    try:
        config = load_config(args.config, args.overrides, base=base)
        if args.init:
            config["init"] = {**(config.get("init") or {}), "source": args.init}
        status = train(config, args.resume)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except DiskError as error:
        teardown()
        print(f"error: {error}", file=sys.stderr)
        note_last_exit(Path(config["run_dir"]), DISK_STATUS)
        return DISK_STATUS
    except Preempted as stop:
        teardown()
        if stop.main:
            print(f"stopped by {stop.signal_name} at step {stop.step} after writing its checkpoint; rerun with "
                  "--resume auto to continue", file=sys.stderr)
        status = PREEMPTED
    except RecordStop as stop:
        teardown()
        print(f"error: {stop}", file=sys.stderr)
        # Whatever this rank: only the rank whose loader met the record knows (torchrun ends the others).
        note_last_exit(Path(config["run_dir"]), PREEMPTED)
        return PREEMPTED
    except Diverged as error:
        teardown()
        print(f"error: {error}", file=sys.stderr)
        status = DIVERGED
    except KeyboardInterrupt:
        print("interrupted; the newest step_*.pt in run_dir is where --resume auto continues", file=sys.stderr)
        return 130
    if int(os.environ.get("RANK", 0)) == 0:
        write_last_exit(Path(config["run_dir"]), status)
    return status


def write_last_exit(run_dir: Path, status: int) -> None:
    """run_dir/last_exit: the main rank's exit status, for job scripts that see only torchrun's own status."""
    run_dir.mkdir(parents=True, exist_ok=True)
    temp = run_dir / "last_exit.tmp"
    temp.write_text(f"{status}\n")
    os.replace(temp, run_dir / "last_exit")


def note_last_exit(run_dir: Path, status: int) -> None:
    """write_last_exit where the disk may be what failed: when the file cannot be written, a stale one is removed
    (if even that can be done), so that a job script never requeues on the 75 of an earlier run."""
    try:
        write_last_exit(run_dir, status)
    except OSError:
        for name in ("last_exit.tmp", "last_exit"):
            with contextlib.suppress(OSError):
                (run_dir / name).unlink(missing_ok=True)
