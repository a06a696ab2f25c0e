"""Safe files: checkpoints never run pickled code and are written atomically, exports are never half
written under their real name, remote code runs only when asked, and no API key reaches anything a run writes."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import CONF_DIR, compose
from train import train
from zephyr_lightning.checkpoint_io import SafeCheckpointIO
from zephyr_lightning.export import export_checkpoint, export_hf
from zephyr_lightning.models import ModelSpec, build_tiny_mistral, load_causal_lm
from zephyr_lightning.secrets import REDACTED, is_secret_key, redact

ROOT = Path(__file__).resolve().parent.parent


class _Payload:
    """Unpickling this creates a file: the stand-in for arbitrary code in a tampered checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def tampered_checkpoint(tmp_path):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "checkpoints" / "last.ckpt"
    path.parent.mkdir()
    torch.save({"state_dict": {}, "global_step": 0, "evil": _Payload(marker)}, path)
    return path, marker


def test_tampered_checkpoint_never_runs_its_payload(tmp_path, tampered_checkpoint):
    path, marker = tampered_checkpoint
    with pytest.raises(pickle.UnpicklingError):
        SafeCheckpointIO().load_checkpoint(path)
    with pytest.raises(ValueError, match="weights_only=True only"):
        SafeCheckpointIO().load_checkpoint(path, weights_only=False)
    with pytest.raises(pickle.UnpicklingError):
        export_checkpoint(path, tmp_path / "export")
    # The training app resuming from it (resume=true finds it as the newest checkpoint).
    with pytest.raises(pickle.UnpicklingError):
        train(compose(["+experiment=dpo", "logger=csv", "+data.max_train_samples=8", "resume=true"], tmp_path))
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is real: unrestricted loading runs it
    assert marker.exists()


def test_checkpoint_write_is_all_or_nothing(tmp_path, monkeypatch):
    io = SafeCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, path)

    def crash_midway(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert os.listdir(path.parent) == ["last.ckpt"]  # no partial file left, the old one intact
    assert io.load_checkpoint(path)["global_step"] == 1


def test_stale_staging_is_told_from_everything_else(tmp_path):
    from zephyr_lightning.atomic import atomic_write, remove_stale_staging, staging_files

    for name in (".last.ckpt.ab12cd34.partial", ".judged.jsonl.x9y8z7w6.partial", "last.ckpt", "notes.partial",
                 ".hidden"):
        (tmp_path / name).write_text("x")
    for name in ("hf", ".hf.partial-q1w2e3", ".hf2.partial-r4t5y6", ".hf.previous"):
        (tmp_path / name).mkdir()
    assert [p.name for p in staging_files(tmp_path, ("judged.jsonl",))] == [".judged.jsonl.x9y8z7w6.partial"]
    # An export's staging folder goes only when its target exists (else it may be the only copy).
    removed = remove_stale_staging(tmp_path)
    assert sorted(p.name for p in removed) == [".hf.partial-q1w2e3", ".judged.jsonl.x9y8z7w6.partial",
                                               ".last.ckpt.ab12cd34.partial"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hf.previous", ".hf2.partial-r4t5y6", ".hidden", "hf",
                                                          "last.ckpt", "notes.partial"]
    # The names atomic_write stages under are the ones recognised.
    with pytest.raises(RuntimeError), atomic_write(tmp_path / "out.json") as f:
        f.write("{")
        assert [p.name for p in staging_files(tmp_path, ("out.json",))][0].startswith(".out.json.")
        raise RuntimeError("killed")


def test_export_crash_leaves_no_folder_that_looks_complete(tmp_path, tokenizer, monkeypatch):
    model = build_tiny_mistral()
    out = tmp_path / "hf"

    def crash(*args, **kwargs):
        raise RuntimeError("killed while writing the tokenizer")

    monkeypatch.setattr(type(tokenizer), "save_pretrained", crash)
    with pytest.raises(RuntimeError, match="killed"):
        export_hf(model, tokenizer, out)
    assert os.listdir(tmp_path) == []  # neither hf/ nor a staging folder

    monkeypatch.undo()
    export_hf(model, tokenizer, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(type(tokenizer), "save_pretrained", crash)
    with pytest.raises(RuntimeError):
        export_hf(build_tiny_mistral(seed=3), tokenizer, out)
    assert os.listdir(tmp_path) == ["hf"]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the previous export, untouched


def test_remote_code_runs_only_when_trusted(tmp_path):
    folder = tmp_path / "model"
    build_tiny_mistral().save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="evil_mistral", auto_map={"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"})
    (folder / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "remote-code-ran"
    (folder / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from transformers import MistralConfig, MistralForCausalLM\n"
        "class EvilConfig(MistralConfig):\n    model_type = 'evil_mistral'\n"
        "class EvilModel(MistralForCausalLM):\n    config_class = EvilConfig\n"
    )
    assert ModelSpec(str(folder)).trust_remote_code is False
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_causal_lm(ModelSpec(str(folder)))
    assert not marker.exists()
    load_causal_lm(ModelSpec(str(folder), trust_remote_code=True))  # only when the user says so
    assert marker.exists()


@pytest.mark.parametrize("model", sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml")))
def test_shipped_model_configs_do_not_trust_remote_code(model, tmp_path):
    assert compose([f"model={model}"], tmp_path).model.trust_remote_code is False


def test_secret_keys_are_recognised():
    for key in ("api_key", "judge.api_key", "OPENAI_API_KEY", "hf_token", "token", "password", "client_secret"):
        assert is_secret_key(key), key
    for key in ("pad_token", "eos_token", "max_new_tokens", "monitor", "key", "tokenizer_name_or_path"):
        assert not is_secret_key(key), key
    assert redact({"judge": {"api_key": "sk-1", "model": "gpt-4"}, "argv": ["+judge.api_key=sk-1"]}, []) == {
        "judge": {"api_key": REDACTED, "model": "gpt-4"}, "argv": [f"+judge.api_key={REDACTED}"]}
    assert redact("a=1,+judge.api_key=sk-1,judge.model=x", []) == f"a=1,+judge.api_key={REDACTED},judge.model=x"
    assert redact({"note": "uses sk-env-secret-1"}, ["sk-env-secret-1"]) == {"note": f"uses {REDACTED}"}


def test_secrets_in_dict_literal_overrides_are_found_and_blanked(monkeypatch):
    import zephyr_lightning.secrets as secrets

    monkeypatch.setattr(secrets, "_registered", set())
    overrides = ["+extra={api_key: sk-dict-1234, db: {password: 'pass, phrase'}}", "+judge.api_key=sk-flat-5678",
                 "judge.token=choice(tok-aaaa,tok-bbbb)", "+judge.api_key_env=MY_KEY", "judge.api_key=${oc.env:K}",
                 "trainer.max_steps=2", "--multirun"]
    found = secrets.override_secret_values(overrides)
    assert found == ["sk-dict-1234", "pass, phrase", "sk-flat-5678", "tok-aaaa", "tok-bbbb"]
    # Without knowing the values, the key: value and key=value patterns still blank them beside their key,
    # as in Hydra's "Error executing job with overrides: [...]" line.
    line = f"Error executing job with overrides: {overrides[:2]}"
    assert redact(line, []) == ("Error executing job with overrides: [\"+extra={api_key: <redacted>, db: "
                                "{password: <redacted>}}\", '+judge.api_key=<redacted>']")
    assert redact('{"hf_token": "hf_abc", "pad_token": "</s>", "token": null}', []) == (
        '{"hf_token": <redacted>, "pad_token": "</s>", "token": null}')
    assert redact("judge.api_key=${oc.env:K}", []) == "judge.api_key=${oc.env:K}"  # names a variable
    secrets.register_secret_values(found)
    assert redact("the value sk-dict-1234 in passing, and pass, phrase") == f"the value {REDACTED} in passing, and {REDACTED}"


# Credentials as a user may plant them: in the environment, flat on the command line, and in a dict literal.
ENV_SECRETS = {
    "WANDB_API_KEY": "wandbkey" + "7" * 32,
    "OPENAI_API_KEY": "sk-judgekey-0123456789abcdef",
    "JUDGE_API_KEY": "judgekey-fedcba9876543210",
    "HF_TOKEN": "hf_tokenvalue0123456789",
}
LITERAL = "sk-literal-on-the-command-line-42"
DICT_KEY, DICT_PASSWORD = "sk-dict-literal-key-0001", "pw dict literal 0002"
SECRET_OVERRIDES = [f"+judge.api_key={LITERAL}", f"+extra={{api_key: {DICT_KEY}, db: {{password: '{DICT_PASSWORD}'}}}}"]
PLANTED = (*ENV_SECRETS.values(), LITERAL, DICT_KEY, DICT_PASSWORD)


def _run_command(args: list[str], tmp_path: Path, secret_overrides: list[str] = SECRET_OVERRIDES,
                 **env: str) -> subprocess.CompletedProcess:
    wandb_dirs = {name: str(tmp_path / name.lower()) for name in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR")}
    full_env = {**os.environ, **ENV_SECRETS, **wandb_dirs, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1",
                "HF_DATASETS_OFFLINE": "1", **env}
    full_env.pop("HYDRA_FULL_ERROR", None) if "HYDRA_FULL_ERROR" not in env else None
    return subprocess.run([sys.executable, *args, *secret_overrides], cwd=ROOT, env=full_env, capture_output=True,
                          text=True, timeout=600)


def _assert_no_secret_anywhere(tmp_path: Path, result: subprocess.CompletedProcess) -> dict[str, bytes]:
    """Every file under tmp_path (the run folder, W&B's folders), stdout and stderr: no planted value."""
    texts = {str(p): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    texts["stdout"], texts["stderr"] = result.stdout.encode(), result.stderr.encode()
    for value in PLANTED:
        leaked = [name for name, data in texts.items() if value.encode() in data]
        assert not leaked, f"{value} found in {leaked}"
    return texts


def test_no_api_key_reaches_any_file_the_run_writes(tmp_path):
    """A training run with W&B offline: .hydra/ (config, hydra.yaml, overrides), result.json, the W&B run
    file that `wandb sync` uploads, the log, the console."""
    run_dir = tmp_path / "run"
    result = _run_command(
        ["train.py", "+experiment=dpo", f"hydra.run.dir={run_dir}", "logger=wandb", "logger.wandb.offline=true",
         "trainer.max_steps=2", "+data.max_train_samples=8", "+data.max_val_samples=4",
         "callbacks.sample_generation.max_new_tokens=2", "+judge.model=gpt-4"], tmp_path, WANDB_MODE="offline")
    assert result.returncode == 0, result.stderr[-3000:]
    texts = _assert_no_secret_anywhere(tmp_path, result)
    records = [data for name, data in texts.items() if name.endswith(".wandb")]
    assert records and b"gpt-4" in records[0]  # the config (and command line) reached W&B, redacted
    overrides = (run_dir / ".hydra" / "overrides.yaml").read_text()
    assert f"+judge.api_key={REDACTED}" in overrides and f"+extra={{api_key: {REDACTED}, db: {{password:" in overrides
    assert "gpt-4" in (run_dir / ".hydra" / "config.yaml").read_text()  # the rest of the config is kept
    assert json.loads((run_dir / "result.json").read_text())["status"] == "completed"


def test_no_api_key_reaches_any_file_of_an_aif_run(tmp_path):
    run_dir = tmp_path / "aif"
    result = _run_command(["-m", "zephyr_lightning.aif", "step=generate", "prompts.limit=2",
                           "generate.num_completions=1", f"hydra.run.dir={run_dir}", "progress_bar=false"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run_dir / "generations.jsonl").exists() and (run_dir / "aif.log").exists()
    _assert_no_secret_anywhere(tmp_path, result)
    assert f"api_key: {REDACTED}" in (run_dir / ".hydra" / "config.yaml").read_text()


@pytest.fixture(scope="module")
def empty_data(tmp_path_factory) -> Path:
    from tests.helpers import pref_row, write_jsonl

    folder = tmp_path_factory.mktemp("empty_data")
    (folder / "train_prefs.jsonl").write_bytes(b"")
    write_jsonl(folder / "test_prefs.jsonl", [pref_row("Q?", "A.", "B.")])
    return folder


def test_a_failing_run_tells_a_user_error_in_one_message_and_no_secret(tmp_path, empty_data):
    """Bad data found inside Lightning's fit: one message on stderr naming the file, exit status 1, the
    error in result.json and the log; no traceback, and no credential in any of it."""
    run_dir = tmp_path / "run"
    result = _run_command(["train.py", "+experiment=dpo", f"hydra.run.dir={run_dir}", "logger=csv",
                           f"data.path={empty_data}"], tmp_path)
    assert result.returncode == 1
    message = f"{empty_data / 'train_prefs.jsonl'}: the file is empty (0 bytes); split 'train_prefs' has no rows"
    assert result.stderr.strip().splitlines()[-2:] == [f"Error: {message}",
                                                       "(set HYDRA_FULL_ERROR=1 to see the traceback)"]
    assert "Traceback" not in result.stderr + result.stdout
    assert "Error executing job" not in result.stderr  # Hydra's line with every override
    record = json.loads((run_dir / "result.json").read_text())
    assert record["status"] == "failed" and record["error"] == f"DataError: {message}"
    assert f"Error: {message}" in (run_dir / "train.log").read_text()
    _assert_no_secret_anywhere(tmp_path, result)


def test_hydra_full_error_shows_the_chain_and_still_no_secret(tmp_path, empty_data):
    result = _run_command(["train.py", "+experiment=dpo", f"hydra.run.dir={tmp_path / 'run'}", "logger=csv",
                           f"data.path={empty_data}"], tmp_path, HYDRA_FULL_ERROR="1")
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "zephyr_lightning.data.sources.DataError" in result.stderr and "the file is empty" in result.stderr
    assert f"+judge.api_key={REDACTED}" in result.stderr  # Hydra's "Error executing job with overrides" line
    _assert_no_secret_anywhere(tmp_path, result)


def test_no_api_key_reaches_any_file_of_a_multirun(tmp_path):
    """A Hydra multirun (`-m`): the sweep's `multirun.yaml`, each job's `.hydra/`, result.json and log, the
    launcher's lines on the console."""
    from tests.test_train_cli import ONE_STEP

    sweep_dir = tmp_path / "sweep"
    result = _run_command(["train.py", "-m", "+experiment=sft", f"hydra.sweep.dir={sweep_dir}", "logger=csv", *ONE_STEP,
                           "seed=1,2"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [json.loads((sweep_dir / job / "result.json").read_text())["status"] for job in ("0", "1")] == ["completed"] * 2
    _assert_no_secret_anywhere(tmp_path, result)
    multirun = (sweep_dir / "multirun.yaml").read_text()
    assert f"+judge.api_key={REDACTED}" in multirun and "seed=1,2" in multirun  # redacted, the rest kept
    assert f"+judge.api_key={REDACTED}" in (sweep_dir / "1" / ".hydra" / "overrides.yaml").read_text()


def _generations(folder: Path) -> Path:
    from tests.helpers import write_jsonl
    from tests.test_aif_openai import generation_row

    return write_jsonl(folder / "generations.jsonl", [generation_row("Say hello.", ["Hello!", "Hi there, friend."]),
                                                      generation_row("Name a colour.", ["Blue.", "Red, like a rose."])])


def test_no_api_key_reaches_any_file_of_an_aif_judge_step(tmp_path):
    """`step=judge` with an OpenAI-compatible judge (a real server on loopback) that reads its key from the
    environment: the key reaches the server's Authorization header and nothing the step writes."""
    from tests.fake_openai import FakeOpenAIServer, Reply, chat_reply
    from tests.test_aif_openai import ratings_for, response_of

    run_dir = tmp_path / "aif"
    _generations(run_dir)
    with FakeOpenAIServer(lambda body, seen: Reply(200, chat_reply(json.dumps(
            {**ratings_for(response_of(body)), "rationale": "fine"})))) as server:
        result = _run_command(["-m", "zephyr_lightning.aif", "step=judge", "judge=openai", f"judge.base_url={server.url}",
                               "judge.model=judge-x", "judge.max_retries=0", f"hydra.run.dir={run_dir}",
                               "progress_bar=false"], tmp_path, secret_overrides=[f"+extra={{api_key: {DICT_KEY}}}"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert {r.headers.get("Authorization") for r in server.requests} == {f"Bearer {ENV_SECRETS['OPENAI_API_KEY']}"}
    assert len(server.requests) == 4 and (run_dir / "judged.jsonl").exists() and (run_dir / "judge_cache.jsonl").exists()
    _assert_no_secret_anywhere(tmp_path, result)


def test_a_key_given_to_the_aif_judge_on_the_command_line_is_refused_without_showing_it(tmp_path):
    """The mistake of issue 19 (`+judge.api_key=sk-...`): the judge takes no key argument (only the NAME of
    the variable holding it), so the step stops before any request, saying so, and the key is nowhere."""
    run_dir = tmp_path / "aif"
    _generations(run_dir)
    result = _run_command(["-m", "zephyr_lightning.aif", "step=judge", "judge=openai", "judge.base_url=http://127.0.0.1:9/v1",
                           f"hydra.run.dir={run_dir}", "progress_bar=false"], tmp_path)
    assert result.returncode == 1
    assert f"judge.api_key='{REDACTED}': not an argument of OpenAIJudge (it takes api_key_env," in result.stderr
    assert "Traceback" not in result.stderr
    assert not (run_dir / "judged.jsonl").exists()
    _assert_no_secret_anywhere(tmp_path, result)


def test_no_api_key_reaches_any_file_of_an_evaluation(tmp_path):
    """`python -m zephyr_lightning.evaluate` with an OpenAI-compatible judge on loopback that reads its key from
    the environment, and secrets on the command line: answers, judgments, caches, report, summary, log, .hydra/."""
    from tests.fake_openai import FakeOpenAIServer
    from tests.helpers import write_jsonl
    from tests.test_eval_command import _judge_server
    from zephyr_lightning.data.questions import load_questions

    questions = load_questions("builtin:eval_questions")[:2]
    answers = write_jsonl(tmp_path / "answers.jsonl", [{"question_id": q.question_id, "answers": list(q.turns)}
                                                       for q in questions])
    run_dir = tmp_path / "eval"
    with FakeOpenAIServer(_judge_server) as server:
        result = _run_command(["-m", "zephyr_lightning.evaluate", "~models",
                               f"+models.a={{_target_: zephyr_lightning.evaluate.AnswerFile, path: {answers}}}",
                               "evaluation.baseline=null", "questions.limit=2", "safety=null", "report.plots=false",
                               "evaluation.show_progress=false", "judges=openai", f"judges.gpt4o.base_url={server.url}",
                               "judges.gpt4o.model=judge", "judges.gpt4o.max_retries=0", f"hydra.run.dir={run_dir}"],
                              tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert {r.headers.get("Authorization") for r in server.requests} == {f"Bearer {ENV_SECRETS['OPENAI_API_KEY']}"}
    assert len(server.requests) == 4 and (run_dir / "summary.json").exists() and (run_dir / "report.md").exists()
    _assert_no_secret_anywhere(tmp_path, result)
    assert f"+judge.api_key={REDACTED}" in (run_dir / ".hydra" / "overrides.yaml").read_text()
