"""Models by hub name, with no network: a Hugging Face cache laid out as huggingface_hub lays it out, made here
from the tiny checkpoint under the real repo names and subfolders, read with HF_HUB_OFFLINE=1."""

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors import safe_open
from test_eval import tiny_clap_folder
from test_train import write_config

from housevox.acestep import hub
from housevox.acestep.info import main as info_main
from housevox.acestep.loading import load_text_encoder, load_vae, open_checkpoint
from housevox.errors import HousevoxError, run_cli
from housevox.eval.embed import ClapEmbedding

ROOT = Path(__file__).resolve().parents[1]
XL_BASE = "ACE-Step/acestep-v15-xl-base"
SHARED = ["vae", "Qwen3-Embedding-0.6B"]


def add_repo(cache: Path, repo_id: str, files: dict[str, Path], ref: str = "main") -> str:
    """Lay `files` (path in the repo -> local file) out as huggingface_hub caches them: content-addressed blobs,
    a snapshot folder of relative symlinks named by the commit, and refs/<ref> holding the commit."""
    storage = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(json.dumps([repo_id, ref, sorted(files)]).encode()).hexdigest()
    for rel, src in files.items():
        data = src.read_bytes()
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = storage / "snapshots" / commit / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / ref).write_text(commit)
    return commit


def folder_files(folder: Path, prefix: str = "") -> dict[str, Path]:
    return {f"{prefix}{p.name}": p for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, tiny_checkpoint) -> Path:
    """The tiny checkpoint as ACE-Step publishes it: the DiT repo at its root, vae/ and the text encoder in the main
    repo (next to an LM folder housevox must not need); tagged v1 too; and a tiny CLAP as laion/larger_clap_music."""
    cache = tmp_path_factory.mktemp("hf") / "hub"
    add_repo(cache, XL_BASE, folder_files(tiny_checkpoint))
    add_repo(cache, XL_BASE, folder_files(tiny_checkpoint), ref="v1")
    add_repo(cache, hub.SHARED_REPO, {k: v for d in SHARED for k, v in folder_files(tiny_checkpoint / d, f"{d}/").items()})
    add_repo(cache, "laion/larger_clap_music", folder_files(Path(tiny_clap_folder(tmp_path_factory.mktemp("clap")))))
    return cache


@pytest.fixture
def offline(monkeypatch, hub_cache):
    """This process reads `hub_cache` with HF_HUB_OFFLINE=1; records every snapshot_download call."""
    import huggingface_hub
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    calls, real = [], huggingface_hub.snapshot_download
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo_id, **kw: calls.append((repo_id, kw.get("revision"), kw.get("allow_patterns"))) or real(repo_id, **kw))
    hub.resolve_checkpoint.cache_clear()
    yield calls
    hub.resolve_checkpoint.cache_clear()


def commit_of(cache: Path, repo_id: str, ref: str = "main") -> str:
    return (cache / f"models--{repo_id.replace('/', '--')}" / "refs" / ref).read_text()


@pytest.mark.parametrize("value, expected", [
    ("acestep-v15-xl-base", ("ACE-Step/acestep-v15-xl-base", "", None)),
    ("ACE-Step/acestep-v15-xl-sft@v1.0", ("ACE-Step/acestep-v15-xl-sft", "", "v1.0")),
    ("acestep-v15-turbo", ("ACE-Step/Ace-Step1.5", "acestep-v15-turbo", None)),
    ("someone/acestep-v15-xl-base", None),
    ("acestep-v15-xl-base@", None),
    ("./acestep-v15-xl-base", None),
    ("checkpoints/acestep-v15-xl-base", None),
    ("acestep-v15-xxl", None),
])
def test_model_names(value, expected):
    ref = hub.parse_model_name(value)
    assert (ref and (ref.repo_id, ref.subfolder, ref.revision)) == expected


def test_model_name_resolves_in_the_offline_cache(offline, hub_cache, tiny_checkpoint, tmp_path):
    ckpt = open_checkpoint("acestep-v15-xl-base")
    dit_commit, shared_commit = commit_of(hub_cache, XL_BASE), commit_of(hub_cache, hub.SHARED_REPO)
    assert ckpt.root == hub_cache / "models--ACE-Step--acestep-v15-xl-base" / "snapshots" / dit_commit
    assert ckpt.vae_dir.parent.name == shared_commit and ckpt.text_encoder_dir.name == "Qwen3-Embedding-0.6B"
    assert dict(ckpt.sources) == {"dit": f"{XL_BASE}@{dit_commit}", "vae": f"{hub.SHARED_REPO}@{shared_commit}:vae/",
                                  "text_encoder": f"{hub.SHARED_REPO}@{shared_commit}:Qwen3-Embedding-0.6B/"}
    # Only huggingface_hub's snapshot_download fetched, and only what housevox reads (no LM, no other DiT).
    assert offline == [(XL_BASE, None, list(hub.DIT_PATTERNS)), (hub.SHARED_REPO, None, ["vae/*", "Qwen3-Embedding-0.6B/*"])]
    assert load_vae("ACE-Step/acestep-v15-xl-base") is not None and load_text_encoder("acestep-v15-xl-base")[1] is not None
    # The same files as a downloaded folder of the same name: the same fingerprint (a segment cache carries over).
    local = shutil.copytree(tiny_checkpoint, tmp_path / "acestep-v15-xl-base")
    assert open_checkpoint(local).fingerprint() == ckpt.fingerprint()


def test_pinned_revision_is_resolved_and_recorded(offline, hub_cache):
    ckpt = open_checkpoint("acestep-v15-xl-base@v1")
    assert dict(ckpt.sources)["dit"] == f"{XL_BASE}@{commit_of(hub_cache, XL_BASE, 'v1')}"
    assert commit_of(hub_cache, XL_BASE, "v1") != commit_of(hub_cache, XL_BASE)
    assert offline[0][1] == "v1"


def test_the_lint_reads_a_model_names_config_without_its_weights(offline, hub_cache, tiny_checkpoint):
    from housevox.plan.run import base_model

    cfg, _, _, note = base_model("acestep-v15-xl-base")
    assert cfg.raw == json.loads((tiny_checkpoint / "config.json").read_text()) and offline == []  # no snapshot
    assert note.endswith(f"snapshots/{commit_of(hub_cache, XL_BASE)}/config.json")


def one_line(capsys, argv, code=1) -> str:
    assert run_cli(info_main, argv) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


def test_missing_files_name_what_and_the_fetch_command(offline, hub_cache, tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants as constants

    err = one_line(capsys, ["acestep-v15-xl-base@nope"])
    assert "not in the Hugging Face cache" in err and "`hf download ACE-Step/acestep-v15-xl-base --revision nope`" in err
    broken = shutil.copytree(hub_cache, tmp_path / "hub", symlinks=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(broken))
    shared = broken / "models--ACE-Step--Ace-Step1.5" / "snapshots" / commit_of(broken, hub.SHARED_REPO)
    (shared / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    err = one_line(capsys, ["acestep-v15-xl-base"])
    assert "diffusion_pytorch_model.safetensors is missing" in err and '`hf download ACE-Step/Ace-Step1.5 --include "vae/*"`' in err
    shutil.rmtree(broken / "models--ACE-Step--Ace-Step1.5")
    err = one_line(capsys, ["acestep-v15-xl-base"])
    assert '`hf download ACE-Step/Ace-Step1.5 --include "vae/*" --include "Qwen3-Embedding-0.6B/*"`' in err
    shard = next((broken / "models--ACE-Step--acestep-v15-xl-base" / "snapshots").glob("*/model-00001-*.safetensors"))
    shard.unlink()
    err = one_line(capsys, ["acestep-v15-xl-base"])
    assert shard.name in err and "`hf download ACE-Step/acestep-v15-xl-base`" in err


def test_a_local_path_never_touches_the_hub(monkeypatch, tmp_path, tiny_checkpoint, capsys):
    import huggingface_hub

    def no_hub(*args, **kwargs):
        raise AssertionError(f"hub called with {args} {kwargs}")

    for owner, name in ((huggingface_hub, "snapshot_download"), (huggingface_hub, "hf_hub_download"),
                        (hub, "resolve_checkpoint"), (hub, "snapshot"), (socket.socket, "connect")):
        monkeypatch.setattr(owner, name, no_hub)
    assert open_checkpoint(tiny_checkpoint).sources == ()
    load_vae(str(tiny_checkpoint))
    load_text_encoder(tiny_checkpoint)
    capsys.readouterr()
    monkeypatch.chdir(shutil.copytree(tiny_checkpoint, tmp_path / "here" / "acestep-v15-xl-base").parent)
    assert open_checkpoint("acestep-v15-xl-base").root == Path("acestep-v15-xl-base")  # the folder, not the model
    err = one_line(capsys, ["models/acestep-v15-xl-base"])  # a missing folder is an error, never a download
    assert "checkpoint folder does not exist" in err
    ClapEmbedding.from_pretrained(tiny_clap_folder(tmp_path / "clap"))
    with pytest.raises(HousevoxError, match="no such folder"):
        ClapEmbedding.from_pretrained(str(tmp_path / "no-such-clap"))


def test_fit_sample_eval_info_run_from_the_model_name(tmp_path, hub_cache, tiny_segments):
    """The CLIs as a user runs them offline: the model name in the config and on the command line."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub_cache), "PYTHONUNBUFFERED": "1"}

    def cli(*argv: str) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    segments = shutil.copytree(tiny_segments, tmp_path / "segments")
    rows = [json.loads(line) for line in (segments / "manifest.jsonl").read_text().splitlines()]
    firsts = {row["track"]: row for row in reversed(rows)}  # one segment a track: the cache re-encodes only two
    (segments / "manifest.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows if row in firsts.values()))
    config = write_config(tmp_path / "cfg.yaml", "acestep-v15-xl-base@v1", segments, num_inference_steps=2)
    doc = yaml.safe_load(config.read_text())
    doc["trainer"].update(max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    config.write_text(yaml.safe_dump(doc))
    cli("housevox.fit", "fit", "--config", str(config), "--trainer.default_root_dir", str(tmp_path))
    run = tmp_path / "lightning_logs" / "t"
    lora = run / "lora" / "epoch_001" / "t_epoch_001.safetensors"
    with safe_open(lora, "pt") as fh:
        meta = fh.metadata()
    assert meta["base_model"] == "acestep-v15-xl-base"
    assert meta["base_model_source_dit"] == f"{XL_BASE}@{commit_of(hub_cache, XL_BASE, 'v1')}"
    assert meta["base_model_source_vae"].startswith(f"{hub.SHARED_REPO}@{commit_of(hub_cache, hub.SHARED_REPO)}")
    profile = json.loads((run / "run_profile.json").read_text())
    assert profile["base_model"]["sources"]["dit"] == meta["base_model_source_dit"]

    info = cli("housevox.acestep.info", "ACE-Step/acestep-v15-xl-base").stdout
    assert "missing:      nothing" in info and f"from the hub: dit {XL_BASE}@{commit_of(hub_cache, XL_BASE)}" in info
    cli("housevox.sample", "--checkpoint-dir", "acestep-v15-xl-base", "--lora", str(lora), "--duration", "1",
        "--steps", "2", "--out", str(tmp_path / "take.wav"))
    assert (tmp_path / "take.wav").is_file()
    cli("housevox.eval", str(run), "--takes", "2", "--duration", "1", "--steps", "2",
        "--clap-model", "laion/larger_clap_music", "--checkpoint-dir", "acestep-v15-xl-base")
    embedding = json.loads((run / "eval.json").read_text())["embedding"]
    assert embedding == {"kind": "clap", "model": "laion/larger_clap_music",
                         "revision": commit_of(hub_cache, "laion/larger_clap_music")}
