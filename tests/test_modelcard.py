"""Model cards written from a run's records, and pushes to a Hub (a real HTTP server on loopback)."""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import torch
import yaml
from huggingface_hub import ModelCard

from tests.fake_hub import FakeHub
from tests.helpers import compose
from train import train
from zephyr_lightning import PreferenceDataModule
from zephyr_lightning.callbacks import DataSummary, HFExport
from zephyr_lightning.export import main as export_main
from zephyr_lightning.modelcard import RunRecords, render_card

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "hf_fake" + "0123456789abcdef" * 2
OPENAI_KEY = "sk-openai-fedcba9876543210"
LITERAL_KEY = "sk-literal-on-the-command-line-42"
SHORT = ["trainer.max_steps=3", "trainer.val_check_interval=2", "trainer.limit_val_batches=2", "logger=csv",
         "callbacks.sample_generation.max_new_tokens=2"]


def card_metadata(text: str) -> dict:
    """The card's YAML block, parsed by PyYAML and, as the Hub reads it, by huggingface_hub."""
    assert text.startswith("---\n")
    metadata = yaml.safe_load(text.split("---\n", 2)[1])
    assert ModelCard(text).data.to_dict() == metadata
    return metadata


def folder_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_token_only_in_authorization_header(hub: FakeHub) -> None:
    assert hub.requests
    for request in hub.requests:
        assert TOKEN not in request.path and TOKEN.encode() not in request.body, request.path
        carrying = {name for name, value in request.headers.items() if TOKEN in value}
        assert carrying <= {"authorization"}, (request.path, carrying)
        if request.path.startswith("/api/"):
            assert request.headers["authorization"] == f"Bearer {TOKEN}", request.path


def subprocess_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **extra}


def run_export(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zephyr_lightning.export", *args], cwd=ROOT, env=subprocess_env(**env),
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    """dSFT on the embedded default, in this process (no Hydra records: the card describes the live run),
    pushed by the callback to a loopback Hub. With hf_xet installed huggingface_hub takes its pipelined
    upload path; the server answers every file "regular", so no Xet storage is needed."""
    run_dir = tmp_path_factory.mktemp("sft")
    with FakeHub(lfs_suffixes=()) as hub, pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "disabled")
        mp.setenv("HF_TOKEN", TOKEN)
        mp.setenv("HF_ENDPOINT", hub.url)
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        metrics = train(compose(["+experiment=sft", *SHORT, "callbacks.hf_export.push_to_hub=true",
                                 "callbacks.hf_export.hub_model_id=me/tiny-sft",
                                 "callbacks.hf_export.license=apache-2.0"], run_dir))
    return run_dir, hub, metrics


@pytest.fixture(scope="module")
def dpo_run(sft_run, tmp_path_factory):
    """dDPO from the dSFT export, as a user runs it (Hydra writes .hydra/), with credentials in the
    environment and one on the command line."""
    run_dir = tmp_path_factory.mktemp("dpo") / "run"
    env = subprocess_env(HF_TOKEN=TOKEN, OPENAI_API_KEY=OPENAI_KEY)
    result = subprocess.run(
        [sys.executable, "train.py", "+experiment=dpo", f"hydra.run.dir={run_dir}", f"model.name_or_path={sft_run[0] / 'hf'}",
         "module.beta=0.25", *SHORT, f"+judge.api_key={LITERAL_KEY}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def test_sft_card_names_what_the_run_used(sft_run):
    run_dir, _, metrics = sft_run
    card = (run_dir / "hf" / "README.md").read_text()
    metadata = card_metadata(card)
    assert metadata["library_name"] == "transformers" and metadata["pipeline_tag"] == "text-generation"
    assert metadata["tags"] == ["zephyr-lightning", "sft"]
    assert metadata["license"] == "apache-2.0" and metadata["model_name"] == "me/tiny-sft"
    # builtin: sources are not Hub repositories: named in the prose, left out of the metadata.
    assert "base_model" not in metadata and "datasets" not in metadata
    assert "of `builtin:tiny-mistral` on `builtin:tiny_chat`" in card
    for row in ("| stage | dSFT (distilled supervised fine-tuning), `SFTModule` |", "| learning rate | 0.003 |",
                "| schedule | cosine, 10% warmup |", "| optimizer steps run | 3 |", "| batch size per device | 2 packed rows |",
                "| loss | mean negative log-likelihood per scored token, on assistant tokens |", "| precision | 32-true |"):
        assert row in card, row
    summary = json.loads((run_dir / "data_summary.json").read_text())
    for split, counts in DataSummary.splits(summary).items():
        assert f"| {split} | {counts['source']} | {counts['split']} | {counts['rows']} | {counts['used']} |" in card
    assert "val/loss" in metrics
    for name, value in metrics.items():
        assert f"| `{name}` | {value:.6g} |" in card, name
    assert f"- torch {torch.__version__}" in card and "## Software\n" in card  # the training process's versions
    assert "## Reproduce" not in card  # no Hydra records of the command: left out, not guessed
    assert "## The stage in the paper" in card and "2e-5" in card
    # Every checkpoint carries the versions that trained it, for a card written later.
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["callbacks"]["HFExport"]["software"]["torch"] == torch.__version__


def test_callback_pushes_every_file_with_the_token_only_in_a_header(sft_run):
    run_dir, hub, _ = sft_run
    assert hub.files("me/tiny-sft") == folder_files(run_dir / "hf")
    assert {"README.md", "model.safetensors", "config.json", "tokenizer_config.json"} <= set(hub.files("me/tiny-sft"))
    assert_token_only_in_authorization_header(hub)
    assert TOKEN not in (run_dir / "hf" / "README.md").read_text()


def test_dpo_card_tells_the_recipe_command_and_lineage_without_secrets(dpo_run, sft_run):
    card = (dpo_run / "hf" / "README.md").read_text()
    metadata = card_metadata(card)
    assert metadata["tags"] == ["zephyr-lightning", "dpo"]
    # From the starting model's own card (the dSFT export, made for me/tiny-sft): the Hub lineage and license.
    assert metadata["license"] == "apache-2.0" and metadata["base_model"] == "me/tiny-sft"
    sft_export = sft_run[0] / "hf"
    assert f"of `{sft_export}` on `builtin:tiny_prefs`" in card
    assert (f"The starting model `{sft_export}` is a local folder; its own card names model_name: me/tiny-sft; "
            "license: apache-2.0.") in card
    for row in ("| beta | 0.25 |", "| loss | sigmoid (DPO, Rafailov et al. 2023) |", "| learning rate | 0.001 |",
                "| reference model | the starting model, frozen |", "| batch size per device | 8 preference pairs |",
                "| max prompt length (tokens) | 128 |", "| seed | 42 |", "| schedule | linear, 10% warmup |"):
        assert row in card, row
    result = json.loads((dpo_run / "result.json").read_text())
    assert "val/rewards/accuracies" in result["metrics"]
    for name, value in result["metrics"].items():
        assert f"| `{name}` | {value:.6g} |" in card, name
    overrides = yaml.safe_load((dpo_run / ".hydra" / "overrides.yaml").read_text())
    command = "python train.py " + " ".join(shlex.quote(o) for o in overrides)
    assert f"```bash\n{command}\n```" in card and "module.beta=0.25" in command
    assert "'+judge.api_key=<redacted>'" in command
    for secret in (TOKEN, OPENAI_KEY, LITERAL_KEY):
        assert secret not in card


def test_export_command_rewrites_the_card_with_the_evaluation_and_pushes(dpo_run, tmp_path):
    summary = {"judge": "heuristic", "win_rate": 0.625, "mt_bench": {"turn_1": 6.5, "turn_2": 5.75},
               "per_prompt": [1, 2, 3], "n": 200}
    summary_path = tmp_path / "summary.json"
    summary_path.write_text(json.dumps(summary))
    before = folder_files(dpo_run / "hf")
    out = tmp_path / "export"
    # HF_HUB_DISABLE_XET: huggingface_hub's other upload path, with the weights through LFS (batch, PUT, verify).
    with FakeHub() as hub:
        result = run_export(str(dpo_run), str(out), "--eval-summary", str(summary_path), "--push-to-hub", "me/tiny-dpo",
                            "--private", "--revision", "v1", HF_TOKEN=TOKEN, HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0",
                            HF_HUB_DISABLE_XET="1")
    assert result.returncode == 0, result.stderr[-3000:]
    card = (out / "README.md").read_text()
    assert card_metadata(card)["model_name"] == "me/tiny-dpo"
    assert "- judge: heuristic" in card
    for row in ("| `win_rate` | 0.625 |", "| `mt_bench/turn_1` | 6.5 |", "| `mt_bench/turn_2` | 5.75 |", "| `n` | 200 |"):
        assert row in card, row
    assert "per_prompt" not in card
    assert "## Software\n" in card  # the versions recorded in the run's checkpoint
    # Same weights and tokenizer as the run's export, which itself is untouched.
    assert {k: v for k, v in folder_files(out).items() if k != "README.md"} == {
        k: v for k, v in before.items() if k != "README.md"}
    assert folder_files(dpo_run / "hf") == before
    # Pushed: a private repository, the branch created, every file with its bytes; the weights through LFS.
    assert hub.repos["me/tiny-dpo"].private is True
    assert hub.files("me/tiny-dpo", "v1") == folder_files(out)
    assert any(r.route == "lfs_upload" for r in hub.requests) and any(r.route == "branch" for r in hub.requests)
    assert_token_only_in_authorization_header(hub)
    assert TOKEN not in result.stdout + result.stderr


def test_failed_push_keeps_the_export_and_its_retry_command_works(dpo_run, tmp_path):
    out = tmp_path / "export"
    env = {"HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1"}
    with FakeHub(fail={"commit": 500}) as hub:
        result = run_export(str(dpo_run), str(out), "--push-to-hub", "me/retry", HF_ENDPOINT=hub.url, **env)
        assert result.returncode == 1
        assert "500" in result.stderr and f"The export is complete and kept at {out}" in result.stderr
        retry = result.stderr.split("Retry with HF_TOKEN set:\n", 1)[1].strip().splitlines()[0]
        assert retry == f"python -m zephyr_lightning.export {out} --push-to-hub me/retry"
        assert {"README.md", "model.safetensors", "config.json"} <= set(folder_files(out))
        assert "me/retry" not in hub.repos or not hub.files("me/retry")

        hub.fail.clear()  # the Hub is back: the printed command pushes the export as it is
        args = shlex.split(retry)
        retried = subprocess.run([sys.executable, *args[1:]], cwd=ROOT, env=subprocess_env(HF_ENDPOINT=hub.url, **env),
                                 capture_output=True, text=True, timeout=600)
    assert retried.returncode == 0, retried.stderr[-3000:]
    assert hub.files("me/retry") == folder_files(out)
    assert TOKEN not in result.stderr + retried.stdout + retried.stderr


def test_export_from_a_checkpoint_tells_what_the_checkpoint_recorded(sft_run, tmp_path, capsys):
    run_dir = sft_run[0]
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    export_main([str(checkpoint), str(tmp_path / "from_ckpt")])
    card = (tmp_path / "from_ckpt" / "README.md").read_text()
    # No .hydra/ in this run: the recipe comes from the checkpoint's hyper-parameters, the steps and the
    # software from the checkpoint, the data and metrics from the run folder.
    for row in ("| stage | dSFT (distilled supervised fine-tuning), `SFTModule` |", "| learning rate | 0.003 |",
                "| optimizer steps run | 3 |", "| starting model | builtin:tiny-mistral |"):
        assert row in card, row
    assert f"- torch {torch.__version__}" in card and "## Software\n" in card and "| train | builtin:tiny_chat |" in card
    final, exported = safetensors_state(run_dir / "hf"), safetensors_state(tmp_path / "from_ckpt")
    assert final.keys() == exported.keys() and all(torch.equal(final[k], v) for k, v in exported.items())

    # A run folder whose newest checkpoint is newer than its hf/ (resumed, stopped again) exports the checkpoint.
    stat = checkpoint.stat()
    os.utime(checkpoint, ns=(stat.st_atime_ns, (run_dir / "hf" / "config.json").stat().st_mtime_ns + 10**9))
    try:
        export_main([str(run_dir), str(tmp_path / "from_run")])
    finally:
        os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert "| optimizer steps run | 3 |" in (tmp_path / "from_run" / "README.md").read_text()
    assert str(tmp_path / "from_run") in capsys.readouterr().out


def safetensors_state(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def test_callback_logs_the_retry_command_when_its_push_fails(sft_run, monkeypatch, caplog):
    export = sft_run[0] / "hf"
    with FakeHub(fail={"create": 500}) as hub:
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        callback = HFExport(export, push_to_hub=True, hub_model_id="me/down", revision="v2")
        with caplog.at_level(logging.ERROR):
            assert callback.push() is None  # the run goes on; the export stays
    assert f"python -m zephyr_lightning.export {export} --push-to-hub me/down --revision v2" in caplog.text
    assert (export / "model.safetensors").exists()


def test_push_is_refused_before_anything_loads(tmp_path, monkeypatch, capsys):
    def no_data(*args, **kwargs):
        raise AssertionError("the data was loaded before the push was refused")

    monkeypatch.setattr(PreferenceDataModule, "__init__", no_data)
    push = ["+experiment=dpo", "callbacks.hf_export.push_to_hub=true", "callbacks.hf_export.hub_model_id=me/x"]
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(Exception, match=r"callbacks\.hf_export\.push_to_hub=true: .*HF_TOKEN environment variable"):
        train(compose(push, tmp_path))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with pytest.raises(Exception, match="HF_HUB_OFFLINE=1"):  # the suite runs offline
        train(compose(push, tmp_path))
    with pytest.raises(Exception, match=r"callbacks\.hf_export\.hub_model_id=None: required when push_to_hub=true"):
        train(compose(push[:2], tmp_path))
    assert TOKEN not in capsys.readouterr().err

    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(SystemExit) as exit_:
        export_main([str(tmp_path), "--push-to-hub", "me/x"])
    assert exit_.value.code == 2 and "HF_TOKEN" in capsys.readouterr().err


LORA_CONFIG = {
    "seed": 7,
    "module": {"_target_": "zephyr_lightning.DPOModule", "beta": 0.01, "loss_type": "ipo", "reference": None},
    "model": {"name_or_path": "HuggingFaceH4/mistral-7b-sft-beta", "revision": "abc123", "dtype": "bfloat16",
              "peft": {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]},
              "quantization": {"load_in_4bit": True, "quant_type": "nf4"}},
    "data": {"path": "HuggingFaceH4/ultrafeedback_binarized", "batch_size": 4, "max_length": 1024},
    "trainer": {"devices": 8, "num_nodes": 2, "accumulate_grad_batches": 2, "precision": "bf16-true",
                "strategy": {"_target_": "zephyr_lightning.strategies.fsdp_strategy"}},
    "optim": {"lr": 5e-7, "schedule": "linear", "warmup_ratio": 0.1},
}
DATA_SUMMARY = {
    "train": {"source": "HuggingFaceH4/ultrafeedback_binarized", "split": "train_prefs", "rows": 100, "used": 90,
              "truncated": 2, "decontaminated": 7, "dropped": {"too long": 3}, "filters": {"min_score_gap": 1.0}},
    "mixture": {"HuggingFaceH4/ultrafeedback_binarized": 1.0},
}


def test_lora_cards_name_hub_sources_settings_and_the_export_kind():
    records = RunRecords(config=LORA_CONFIG, data_summary=DATA_SUMMARY)
    adapter = render_card(records, kind="adapter", model_id="me/zephyr-lora")
    metadata = card_metadata(adapter)
    assert metadata["base_model"] == "HuggingFaceH4/mistral-7b-sft-beta"
    assert metadata["datasets"] == ["HuggingFaceH4/ultrafeedback_binarized"]
    assert metadata["library_name"] == "peft" and metadata["tags"] == ["zephyr-lightning", "dpo", "qlora", "peft"]
    assert "license" not in metadata
    assert "the trained LoRA adapter only" in adapter.split("## Use it")[0] and "AutoPeftModelForCausalLM" in adapter
    for row in ("| LoRA rank (r) | 16 |", "| LoRA alpha | 32 |", "| LoRA dropout | 0.05 |",
                "| LoRA target modules | q_proj, v_proj |", "| quantization | load_in_4bit=true, quant_type=nf4 |",
                "| loss | ipo (IPO, Azar et al. 2023; log-probabilities averaged over completion tokens) |",
                "| beta | 0.01 |", "| devices | 16 |", "| effective batch size | 128 preference pairs |",
                "| strategy | fsdp |", "| starting model revision | abc123 |", "| seed | 7 |"):
        assert row in adapter, row
    # The data summary as it is: extra counts become columns, nested values lists, other entries too.
    assert "| used for | source | split | rows | used | truncated | decontaminated |" in adapter
    assert "| train | HuggingFaceH4/ultrafeedback_binarized | train_prefs | 100 | 90 | 2 | 7 |" in adapter
    assert "- train, dropped:\n  - too long: 3" in adapter and "- train, filters:\n  - min_score_gap: 1" in adapter
    assert "- mixture:\n  - HuggingFaceH4/ultrafeedback_binarized: 1" in adapter

    merged = render_card(records, kind="merged")
    assert card_metadata(merged)["library_name"] == "transformers" and "merged into its weights" in merged
    with pytest.raises(ValueError, match="kind='lora'"):
        render_card(records, kind="lora")


def test_a_card_without_records_leaves_every_unknown_out():
    card = render_card(RunRecords(software={"torch": "2.13.0"}))
    assert card_metadata(card) == {"library_name": "transformers", "pipeline_tag": "text-generation",
                                   "tags": ["zephyr-lightning"]}
    for section in ("## Training procedure", "## Training data", "## Final metrics", "## Evaluation", "## Reproduce",
                    "## The stage in the paper"):
        assert section not in card, section
    assert "- torch 2.13.0" in card
