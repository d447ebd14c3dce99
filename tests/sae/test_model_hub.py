"""The Hugging Face hub: from_pretrained (folder, offline cache), save_pretrained, push_to_hub and push_run,
all without the network (uploads land in a local folder)."""

import hashlib
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from huggingface_hub import HfApi, ModelCard, scan_cache_dir
from huggingface_hub.errors import OfflineModeIsEnabled
from huggingface_hub.file_download import repo_folder_name

from usae.config import SAEConfig
from usae.sae.hub import push_run
from usae.sae.integrity import CONFIG, WEIGHTS
from usae.sae.model import USAE

REPO = "someone/tiny-usae"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
FILES = {WEIGHTS, CONFIG, "README.md"}


def trained_model() -> USAE:
    """A USAE whose every weight, buffer and record differs from a fresh one: BatchTopK thresholds and
    BatchNorm statistics moved, per-dimension and scalar standardisation, a training record."""
    model = USAE({"vit": 6, "cnn": 10}, SAEConfig(n_latents=24, k=3, aux_k=4, activation="batchtopk",
                                                  batchnorm=True), seed=3)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    model.train()
    model.encode_sparse("vit", torch.randn(32, 6, generator=gen))
    model.set_standardization("vit", torch.linspace(-2, 2, 6), 3.0)
    model.set_standardization("cnn", 0.25, 0.5)
    model.meta = {"scheme": "paper", "steps": 40, "seed": 5, "usae_version": "0.0.9", "decode": "dense",
                  "train": {"lr": 0.001, "batch_tokens": 64},
                  "standardization": {"vit": {"kind": "per_dim", "mean": torch.linspace(-2, 2, 6).tolist(),
                                              "std": 3.0, "n_images": 4, "n_tokens": 196},
                                      "cnn": {"kind": "scalar", "mean": 0.25, "std": 0.5}},
                  "provenance": {"backbones": {"vit": {"name": "vit_tiny", "library": "timm", "layer": "final"}}}}
    return model.eval()


def assert_same_model(loaded: USAE, model: USAE) -> None:
    """Same settings, records, every tensor, and the same answers on raw activations."""
    assert not loaded.training
    assert (loaded.cfg, loaded.dims, loaded.names, loaded.meta) == (model.cfg, model.dims, model.names, model.meta)
    ref, got = model.state_dict(), loaded.state_dict()
    assert set(ref) == set(got)
    for key in ref:
        assert torch.equal(ref[key], got[key]), key
    raw = torch.randn(5, 6, generator=torch.Generator().manual_seed(1)) * 4 + 1
    codes = model.encode("vit", raw)
    assert codes.abs().sum() > 0
    assert torch.equal(loaded.encode("vit", raw), codes)
    assert torch.equal(loaded.decode("cnn", codes), model.decode("cnn", codes))
    assert torch.equal(loaded("vit", raw).reconstructions["cnn"], model("vit", raw).reconstructions["cnn"])


@pytest.fixture
def model() -> USAE:
    return trained_model()


def test_save_pretrained_writes_the_saved_model_format_and_a_card(tmp_path, model, no_network):
    model.save_pretrained(tmp_path / "m")
    assert {p.name for p in (tmp_path / "m").iterdir()} == FILES
    assert_same_model(USAE.load(tmp_path / "m"), model)  # one format: save's own files
    loaded = USAE.from_pretrained(tmp_path / "m")
    assert_same_model(loaded, model)
    card = (tmp_path / "m" / "README.md").read_text()
    assert card == str(loaded.generate_model_card()) == str(model.generate_model_card())
    assert ModelCard(card).data.library_name == "usae"
    assert 'USAE.from_pretrained("path/to/this/folder")' in card
    assert "| `vit` | per_dim | per dimension (6 values) | 3.0000 | 196 tokens of 4 images |" in card


def test_save_pretrained_replaces_a_saved_model_but_not_other_folders(tmp_path, model):
    model.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "README.md").write_text("a card of an older model")
    other = trained_model()
    other.meta = {**other.meta, "seed": 99}
    other.save_pretrained(tmp_path / "m")
    assert "seed 99" in (tmp_path / "m" / "README.md").read_text()  # no stale card survives
    model.save(tmp_path / "run" / "model")
    (tmp_path / "run" / "model" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"holds other files \['model'\]"):
        model.save_pretrained(tmp_path / "run")
    with pytest.raises(ValueError, match=r"holds other files \['notes.txt'\]"):
        model.save_pretrained(tmp_path / "run" / "model")
    assert_same_model(USAE.load(tmp_path / "run" / "model"), model)  # left whole


def fill_hub_cache(cache: Path, repo_id: str, folder: Path, commit: str) -> None:
    """Put ``folder``'s files in ``cache`` as a download of ``repo_id`` at ``commit``, its main branch, leaves
    them (huggingface_hub's cache layout: blobs by hash, snapshot links, refs/main)."""
    storage = cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    (storage / "blobs").mkdir(parents=True)
    (storage / "snapshots" / commit).mkdir(parents=True)
    for file in sorted(folder.iterdir()):
        blob = storage / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, blob)
        os.symlink(os.path.relpath(blob, storage / "snapshots" / commit), storage / "snapshots" / commit / file.name)
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(commit)


def test_from_pretrained_reads_a_repo_id_from_the_offline_cache(tmp_path, model, offline_hub):
    model.save_pretrained(tmp_path / "m")
    fill_hub_cache(offline_hub, REPO, tmp_path / "m", COMMIT)
    [repo] = scan_cache_dir(offline_hub).repos  # huggingface_hub reads the layout as its own
    assert repo.repo_id == REPO and {r.commit_hash for r in repo.revisions} == {COMMIT}
    assert {f.file_name for f in next(iter(repo.revisions)).files} == FILES

    assert_same_model(USAE.from_pretrained(REPO), model)
    assert_same_model(USAE.from_pretrained(REPO, revision=COMMIT, device="cpu"), model)


def test_a_repo_missing_from_the_offline_cache_is_named(offline_hub):
    with pytest.raises(FileNotFoundError, match=f"hub repo 'someone/absent' is not in the cache {offline_hub}"):
        USAE.from_pretrained("someone/absent")
    with pytest.raises(FileNotFoundError, match="no such model folder, and not a hub repo id"):
        USAE.from_pretrained("results/runs/usae/model")  # a mistyped folder, not a repo id


@pytest.fixture
def uploads(tmp_path, monkeypatch, no_network) -> list[dict]:
    """HfApi's repo creation and upload, recorded; each upload's folder copied to ``tmp_path/uploaded<n>``."""
    calls: list[dict] = []

    def create_repo(self, repo_id, **kwargs):
        calls.append({"create": repo_id, **kwargs})
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        copy = tmp_path / f"uploaded{len(calls)}"
        shutil.copytree(folder_path, copy)
        calls.append({"upload": repo_id, "folder": copy, **kwargs})
        return f"https://huggingface.co/{repo_id}/commit/{COMMIT}"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_push_to_hub_uploads_the_saved_folder(model, uploads):
    url = model.push_to_hub(REPO, private=True)
    assert url == f"https://huggingface.co/{REPO}/commit/{COMMIT}"
    create, upload = uploads
    assert create["create"] == REPO and create["private"] is True
    assert upload["upload"] == REPO and upload["repo_type"] == "model"
    assert {p.name for p in upload["folder"].iterdir()} == FILES
    assert_same_model(USAE.from_pretrained(upload["folder"]), model)
    assert f'USAE.from_pretrained("{REPO}")' in (upload["folder"] / "README.md").read_text()


def evaluated_run(run_dir: Path, model: USAE) -> Path:
    """A run folder as the pipeline leaves it: the model and its evaluation."""
    model.save(run_dir / "model")
    (run_dir / "eval").mkdir()
    metrics = {"models": ["vit", "cnn"], "n_tokens": 1960, "n_images": 40, "tau": 0.1,
               "r2_per_dim": [[0.712, 0.4], [0.35, 0.9]], "dead_fraction": {"vit": 0.125, "cnn": 0.0},
               "dead_above_tau_fraction": {"vit": 0.25, "cnn": 0.0417}, "concepts_firing_in_all_models": 11}
    (run_dir / "eval" / "metrics.json").write_text(json.dumps(metrics))
    pd.DataFrame({"concept": range(4), "firing_entropy": [0.95, 0.9, 0.89, 0.1]}).to_parquet(
        run_dir / "eval" / "concepts.parquet")
    return run_dir


def test_push_run_card_states_the_evaluation(tmp_path, model, uploads):
    run = evaluated_run(tmp_path / "run", model)
    push_run(run, REPO)
    card = (uploads[1]["folder"] / "README.md").read_text()
    assert "On 1,960 validation tokens (40 images), firing threshold tau = 0.1." in card
    assert "| `vit` | 0.712 | 0.400 |\n| `cnn` | 0.350 | 0.900 |" in card
    assert "| `vit` | 12.5% | 25.0% |\n| `cnn` | 0.0% | 4.2% |" in card
    assert "Universal concepts (firing entropy >= 0.9): 2. Concepts that fire (> tau) in every model: 11." in card
    assert_same_model(USAE.from_pretrained(uploads[1]["folder"]), model)

    written = push_run(run, REPO, out=tmp_path / "out")  # the same folder, written instead of uploaded
    assert written == str(tmp_path / "out") and len(uploads) == 2
    assert (tmp_path / "out" / "README.md").read_text() == card


def test_push_run_refuses_a_damaged_model_and_says_when_there_is_no_evaluation(tmp_path, model, uploads, caplog):
    model.save(tmp_path / "run" / "model")
    push_run(tmp_path / "run", REPO)
    assert "has no evaluation (eval/metrics.json)" in caplog.text
    assert "No evaluation was kept with this model" in (uploads[1]["folder"] / "README.md").read_text()

    weights = tmp_path / "run" / "model" / WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x40
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256 differs"):
        push_run(tmp_path / "run", REPO)
    assert len(uploads) == 2  # nothing more was created or uploaded


def test_push_while_offline_is_refused_before_any_connection(model, offline_hub):
    with pytest.raises(OfflineModeIsEnabled):
        model.push_to_hub(REPO)
