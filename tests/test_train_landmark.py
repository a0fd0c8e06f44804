import importlib
import subprocess
import sys

import pytest
import torch

import train_landmark
from config import load_config, read_yaml
from conftest import REPO
from data.errors import InputError
from training.loop import EpochSampler, record_list

TINY = ["data.val_list=null", "model.layers=1", "model.feed_forward=64", "optim.batch_size=4", "sample.epoch_repeats=4",
        "schedule.log_every=1", "schedule.save_every=3", "schedule.keep_last=5", "schedule.eval_every=1000"]


def _overrides(records, run_dir, steps, *extra):
    return [f"data.records={records}", f"run_dir={run_dir}", f"schedule.max_steps={steps}", *TINY, *extra]


def test_config_overrides_and_unknown_keys(tmp_path):
    config = load_config(REPO / "configs" / "landmark.yaml", ["optim.lr=5e-5", "data.val_list=null",
                                                                       "schedule.max_steps=10"])
    assert config["optim"]["lr"] == 5e-5 and config["data"]["val_list"] is None
    assert config["schedule"]["max_steps"] == 10 and config["model"]["d_model"] == 512
    with pytest.raises(InputError, match="unknown config key 'optim.learning_rate'"):
        load_config(REPO / "configs" / "landmark.yaml", ["optim.learning_rate=1"])
    with pytest.raises(InputError, match="no such config file"):
        load_config(tmp_path / "none.yaml")


def test_a_repository_config_is_found_from_another_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config("configs/landmark.yaml")["model"]["d_model"] == 512
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "landmark.yaml").write_text("model: {d_model: 8}\n")  # the working directory's wins
    assert load_config("configs/landmark.yaml")["model"]["d_model"] == 8


def test_epoch_sampler_shards_are_disjoint_and_resumable():
    shards = [[index for _, index in EpochSampler(10, rank, 3, seed=1)] for rank in range(3)]
    assert all(len(s) == 4 for s in shards) and set(sum(shards, [])) == set(range(10))
    sampler = EpochSampler(10, 0, 1, seed=1)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.set_epoch(2, offset=4)
    assert list(sampler) == full[4:] and len(sampler) == 6
    sampler.set_epoch(2, offset=4, count=3)  # the last batches before schedule.max_steps
    assert list(sampler) == full[4:7] and len(sampler) == 3


def test_resumed_run_equals_an_uninterrupted_one(records, tmp_path):
    config = REPO / "configs" / "landmark_smoke.yaml"
    assert train_landmark.main(["--config", str(config), *_overrides(records, tmp_path / "a", 6)]) == 0
    assert train_landmark.main(["--config", str(config), *_overrides(records, tmp_path / "b", 3)]) == 0
    assert train_landmark.main(["--config", str(config), "--resume", "auto",
                                *_overrides(records, tmp_path / "b", 6)]) == 0
    a = torch.load(tmp_path / "a" / "step_000000006.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "step_000000006.pt", weights_only=False)
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, rtol=0, atol=0, msg=name)
    assert (tmp_path / "a" / "config.yaml").is_file()
    # The checkpoint loads as a generator for inference.
    from model_files import load_landmark_generator

    assert load_landmark_generator(tmp_path / "a" / "step_000000006.pt").fusion_transformer is not None


def test_eval_runs_and_logs(records, tmp_path, capsys):
    (tmp_path / "val.txt").write_text("talk_b\n")
    config = REPO / "configs" / "landmark_smoke.yaml"
    code = train_landmark.main(["--config", str(config), *_overrides(records, tmp_path / "run", 2),
                                f"data.val_list={tmp_path / 'val.txt'}", "schedule.eval_every=2"])
    assert code == 0
    assert "step 2: eval L1" in capsys.readouterr().err
    assert list((tmp_path / "run").glob("events.out.tfevents.*"))
    saved = read_yaml(tmp_path / "run" / "config.yaml")  # the whole resolved config, the smoke file's keys and the rest
    assert set(_leaves(saved)) == set(_leaves(read_yaml(train_landmark.BASE_CONFIG)))
    assert saved["model"]["layers"] == 1 and saved["model"]["d_model"] == 512
    config_dict = load_config(config, [f"data.val_list={records}"])
    assert len(record_list(config_dict["data"], "val")) == 2  # a folder of records works too


def test_bad_config_is_a_one_line_error(tmp_path):
    result = subprocess.run([sys.executable, "train_landmark.py", "--config", "configs/landmark_smoke.yaml",
                             "optim.nope=1"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.strip().startswith("error:") and "Traceback" not in result.stderr


def test_torchrun_two_cpu_processes_keep_identical_parameters(records, tmp_path):
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", "29517", "train_landmark.py", "--config", "configs/landmark_smoke.yaml",
                             *_overrides(records, tmp_path / "ddp", 3)],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "parameters identical on all 2 ranks: True" in result.stderr
    assert (tmp_path / "ddp" / "step_000000003.pt").is_file()


def _leaves(config: dict, prefix: str = "") -> dict:
    """{dotted.key: value} of every leaf of a config."""
    leaves = {}
    for key, value in config.items():
        leaves.update(_leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
    return leaves


@pytest.mark.parametrize("trainer", ["train_landmark", "train_render"])
def test_a_smoke_config_holds_only_what_differs_and_the_trainer_lays_it_over_its_base(trainer, tmp_path,
                                                                                    monkeypatch, capsys):
    module = importlib.import_module(trainer)
    smoke = REPO / "configs" / module.BASE_CONFIG.name.replace(".yaml", "_smoke.yaml")
    base, over = _leaves(read_yaml(module.BASE_CONFIG)), _leaves(read_yaml(smoke))
    assert over and [key for key in over if over[key] == base.get(key)] == []
    resolved = {}
    monkeypatch.setattr(module, "train", lambda config, resume: resolved.update(config) or 0)
    assert module.main(["--config", str(smoke), "seed=7"]) == 0
    assert _leaves(resolved) == {**base, **over, "seed": 7}  # every key: what config.yaml and checkpoints hold
    (tmp_path / "typo.yaml").write_text("schedule: {max_step: 3}\n")
    assert module.main(["--config", str(tmp_path / "typo.yaml")]) == 2
    assert capsys.readouterr().err.strip().startswith(f"error: {tmp_path / 'typo.yaml'}: unknown config key "
                                                      "'schedule.max_step'")
