"""housevox.eval: FAD math against scipy, tiny CLAP built offline (and trained here), prompts, eval.json, best epoch."""

import json

import numpy as np
import pytest
import scipy.linalg
import torch

from housevox.errors import HousevoxError, run_cli
from housevox.eval.embed import ClapEmbedding, clap_scores
from housevox.eval.fad import fit_gaussian, frechet_distance
from housevox.eval.prompts import Prompt, distinct_prompts, plan_takes, read_prompts
from housevox.eval.results import CLAP_MARGIN, add_epoch, best_epoch, carry_over, epoch_row, eval_table_markdown, new_document

SR = 48_000


def scipy_fad(a: np.ndarray, b: np.ndarray) -> float:
    """fadtk's formula on the same statistics: scipy.linalg.sqrtm of the covariance product."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def correlated(rng, n: int, d: int, scale: float = 1.0) -> np.ndarray:
    return rng.standard_normal((n, d)) @ (scale * rng.standard_normal((d, d)) / np.sqrt(d))


def test_fad_of_a_set_with_itself_is_zero():
    x = correlated(np.random.default_rng(0), 300, 24)
    g = fit_gaussian(x)
    assert frechet_distance(g, g) < 1e-9
    few = fit_gaussian(x[:5])  # rank-deficient covariance (5 vectors in 24 dimensions) stays real and ≈ 0
    assert frechet_distance(few, few) < 1e-9


def test_fad_grows_with_a_known_shift():
    x = correlated(np.random.default_rng(1), 400, 16)
    direction = np.random.default_rng(2).standard_normal(16)
    direction /= np.linalg.norm(direction)
    values = [frechet_distance(fit_gaussian(x), fit_gaussian(x + s * direction)) for s in (0.25, 0.5, 1.0, 2.0)]
    assert values == sorted(values) and values[0] > 0
    for s, v in zip((0.25, 0.5, 1.0, 2.0), values):
        assert v == pytest.approx(s * s, abs=1e-9)  # a pure shift by s·u moves only the mean: FAD = s²


@pytest.mark.parametrize("seed, n1, n2, d", [(3, 500, 400, 12), (4, 200, 300, 32), (5, 1000, 1000, 4)])
def test_fad_matches_scipy_sqrtm_reference(seed, n1, n2, d):
    rng = np.random.default_rng(seed)
    a, b = correlated(rng, n1, d), correlated(rng, n2, d, scale=1.5) + 0.3
    assert frechet_distance(fit_gaussian(a), fit_gaussian(b)) == pytest.approx(scipy_fad(a, b), abs=1e-6)


def test_fad_refuses_unusable_sets():
    with pytest.raises(ValueError, match="at least 2"):
        fit_gaussian(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="widths differ"):
        frechet_distance(fit_gaussian(np.eye(3)), fit_gaussian(np.eye(4)))


def tiny_clap_folder(path) -> str:
    """A random CLAP (HTSAT audio tower, RoBERTa text tower) with its processor, saved like a hub snapshot."""
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor, RobertaTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4}
    for char in bytes_to_unicode().values():  # byte-level BPE without merges: one token per byte
        vocab.setdefault(char, len(vocab))
    tokenizer = RobertaTokenizer(vocab=vocab, merges=[], model_max_length=64)
    features = ClapFeatureExtractor(feature_size=16, sampling_rate=SR, hop_length=480, max_length_s=1,
                                    fft_window_size=256, truncation="rand_trunc")
    config = ClapConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=80, projection_dim=16),
        audio_config=dict(spec_size=64, num_mel_bins=16, window_size=4, hidden_size=32, patch_embeds_hidden_size=16,
                          depths=[1, 1], num_attention_heads=[1, 2], num_hidden_layers=2, projection_dim=16),
        projection_dim=16)
    torch.manual_seed(0)
    ClapModel(config).save_pretrained(path)
    ClapProcessor(feature_extractor=features, tokenizer=tokenizer).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_clap(tmp_path_factory) -> ClapEmbedding:
    return ClapEmbedding.from_pretrained(tiny_clap_folder(tmp_path_factory.mktemp("clap")))


def tone(freq: float, seconds: float, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    mono = 0.5 * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi)) + 0.01 * rng.standard_normal(t.size)
    return torch.from_numpy(np.stack([mono, mono]).astype(np.float32))


def noise(seconds: float, seed: int) -> torch.Tensor:
    return torch.from_numpy((0.3 * np.random.default_rng(seed).standard_normal((2, int(seconds * SR)))).astype(np.float32))


def test_clap_windows_vectors_and_determinism(tiny_clap):
    assert len(tiny_clap.windows(noise(2.6, 0))) == 3  # a last window at least half full counts
    assert len(tiny_clap.windows(noise(2.4, 0))) == 2
    assert len(tiny_clap.windows(noise(0.3, 0))) == 1
    clip = noise(2.6, 1)
    vectors = tiny_clap.audio(clip)
    assert vectors.shape == (3, 16) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0)
    np.testing.assert_array_equal(vectors, tiny_clap.audio(clip))
    np.testing.assert_allclose(tiny_clap.audio(clip[:, :SR]), vectors[:1], atol=1e-5)  # a window's vector ignores its batch
    assert tiny_clap.text(["deep house"]).shape == (1, 16)


def test_clap_missing_offline_is_one_line(tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    def load(argv):
        ClapEmbedding.from_pretrained(*argv)
        return 0

    for name, needle in ((str(tmp_path / "no-such-clap"), "no such folder"),
                         ("housevox-tests/no-such-clap", "not in the local Hugging Face cache")):
        assert run_cli(load, [name]) != 0
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err, err
    assert "`hf download housevox-tests/no-such-clap`" in err and "--embedding vae" in err, err


@pytest.mark.slow
def test_clap_score_orders_matching_above_mismatched_after_training(tmp_path):
    """Trained contrastively here for a few dozen steps on two sounds, the tiny CLAP must score each caption
    higher on fresh clips of its own sound than on the other's (untrained, the same check fails)."""
    from transformers import ClapModel

    folder = tiny_clap_folder(tmp_path / "clap")
    clap = ClapEmbedding.from_pretrained(folder)
    captions = ["a low steady hum", "bright white noise hiss"]
    make = (lambda s: tone(110.0, 1.0, s), lambda s: noise(1.0, s))
    model: ClapModel = clap.model.train()
    tokens = clap.processor.tokenizer(captions, padding=True, return_tensors="pt")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for step in range(40):
        clips = [make[i](1000 + 2 * step + i)[0].numpy() for i in range(2)]
        feats = clap.processor.feature_extractor(clips, sampling_rate=SR, return_tensors="pt")
        loss = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                     input_features=feats["input_features"], return_loss=True).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    fresh = [make[i](i) for i in range(2)]
    vectors = [clap.audio(clip) for clip in fresh]
    matching = clap_scores(clap, vectors, captions)
    mismatched = clap_scores(clap, vectors, captions[::-1])
    assert all(m > x for m, x in zip(matching, mismatched)), (matching, mismatched)


def test_prompts_and_takes(tmp_path):
    rows = [{"caption": "a", "lyrics": "x", "bpm": 120}, {"caption": "a", "lyrics": "x", "bpm": 120},
            {"caption": "b"}, {"caption": ""}]
    train = distinct_prompts(rows, "train")
    assert [p.caption for p in train] == ["a", "b"] and train[0].bpm == 120
    held = distinct_prompts([{"caption": "h"}], "held_out")
    takes = plan_takes(train, held, 8, seed=42)
    assert [t.prompt.caption for t in takes] == ["a", "b", "a", "b", "a", "b", "h", "h"]
    assert [t.seed for t in takes] == list(range(42, 50))
    assert plan_takes(train, held, 4, 42)[:3] == takes[:3]  # a shorter eval is a prefix of the training takes
    assert all(t.prompt.origin == "held_out" for t in plan_takes([], held, 3, 0))
    path = tmp_path / "p.jsonl"
    path.write_text('{"caption": "deep house", "key": "A minor", "bpm": 124}\n\n{"caption": "techno"}\n')
    assert read_prompts(path) == [Prompt("deep house", bpm=124, key="A minor", origin="file"),
                                  Prompt("techno", origin="file")]
    path.write_text('{"caption": "ok"}\n["no"]\n')
    with pytest.raises(HousevoxError, match=r"p.jsonl:2: needs an object"):
        read_prompts(path)
    with pytest.raises(HousevoxError, match="no prompts"):
        plan_takes([], [], 4, 0)


def test_best_epoch_keeps_prompt_adherence_and_carry_over():
    base = {"fad_train": 10.0, "fad_held_out": 11.0, "clap_score": 0.40}
    doc = new_document({"kind": "clap", "model": "m"}, {"takes": []}, {"train": {}}, base)
    for epoch, fad, clap in ((5, 8.0, 0.39), (10, 6.0, 0.40 - CLAP_MARGIN - 0.01), (15, 7.0, 0.41)):
        add_epoch(doc, epoch_row(epoch, epoch * 10, f"r_{epoch}.safetensors", {"fad_train": fad, "fad_held_out": fad + 1,
                                                                             "clap_score": clap}, base))
    assert doc["best_epoch"] == 15  # epoch 10 has the lowest FAD but stopped following its prompts
    assert doc["epochs"][0]["fad_train_vs_base"] == pytest.approx(-2.0)
    table = eval_table_markdown(doc, chosen=10)
    assert "| 15 ★ best eval | 7 (10) | 8 (11) | 0.41 (0.4) |" in table and "| 10 ← this card |" in table
    again = carry_over(new_document(doc["embedding"], doc["settings"], doc["reference"], base), json.loads(json.dumps(doc)))
    assert [r["epoch"] for r in again["epochs"]] == [5, 10, 15] and again["best_epoch"] == 15
    other = carry_over(new_document({"kind": "vae"}, doc["settings"], doc["reference"], base), doc)
    assert other["epochs"] == [] and other["best_epoch"] is None
    vae = new_document({"kind": "vae"}, {}, {}, {"fad_train": 3.0, "fad_held_out": None, "clap_score": None})
    for epoch, fad in ((2, 2.5), (4, 2.0)):
        add_epoch(vae, epoch_row(epoch, epoch, "f", {"fad_train": fad, "fad_held_out": None, "clap_score": None}, vae["base"]))
    assert best_epoch(vae) == 4 and "fad_held_out_vs_base" not in vae["epochs"][0]


def test_lint_states_the_fit_time_eval_cost():
    from housevox.lora import LoRASettings
    from housevox.plan.lint import lint_run

    common = dict(cfg_ratio=0.15, model_version="base", warmup_steps=10, num_cycles=1, cycle_steps=None, plan=None,
                  total_steps=5800, max_epochs=100, segments_per_step=4, inference_steps=50)
    assert not any("eval_every_n_epochs" in w for w in lint_run(LoRASettings(), **common))
    (line,) = [w for w in lint_run(LoRASettings(), eval_every_n_epochs=10, eval_takes=8, **common) if "eval_every" in w]
    # the seed run: 232 segments x 100 epochs; 10 exports x 8 takes + 8 base takes, 50 steps, CFG pairs
    assert "88 takes" in line and "8,800 DiT forwards" in line and "19% of the training run's compute" in line
    assert "32 PFLOP (FLOP estimate, not measured)" in line


def test_fit_eval_option_must_follow_exports(tiny_checkpoint):
    from housevox.train.module import HouseVoxLoRA

    with pytest.raises(HousevoxError, match="multiple of save_every"):
        HouseVoxLoRA(str(tiny_checkpoint), save_every=2, eval_every_n_epochs=3)
    with pytest.raises(HousevoxError, match="eval_embedding"):
        HouseVoxLoRA(str(tiny_checkpoint), eval_embedding="mert")
    assert HouseVoxLoRA(str(tiny_checkpoint), save_every=2, eval_every_n_epochs=4).hparams.eval_every_n_epochs == 4


def test_takes_derive_from_the_template_and_records_keep_eval_json_format():
    from housevox.eval.prompts import EvalTake
    from housevox.eval.render import RenderSettings
    from housevox.generate import Take

    settings = RenderSettings.of(duration_s=30.0, steps=50, guidance_scale=7.0, shift=3.0)
    record = settings.record()
    assert list(record.items()) == [("duration_s", 30.0), ("steps", 50), ("guidance", "apg"), ("guidance_scale", 7.0),
                                    ("dcw", True), ("chunk_mask", 2.0), ("shift", 3.0), ("sampler", "housevox.generate")]
    (prompt,) = distinct_prompts([{"caption": "deep house", "bpm": 124, "keyscale": "A minor", "timesignature": "4"}],
                                 "train")
    assert prompt == Prompt("deep house", bpm=124, key="A minor", timesignature="4", origin="train")
    take = EvalTake(prompt, 7)
    assert list(take.record().items()) == [("caption", "deep house"), ("lyrics", None), ("bpm", 124),
                                           ("keyscale", "A minor"), ("timesignature", "4"), ("language", None),
                                           ("origin", "train"), ("seed", 7)]
    assert settings.take(take) == Take("deep house", bpm=124, key="A minor", timesignature="4", language="en",
                                       duration_s=30.0, steps=50, guidance_scale=7.0, shift=3.0, seed=7)
    assert settings.take(EvalTake(Prompt("techno", lyrics="la", language="de"), 1)).language == "de"
