"""Checkpoint loading: parity with upstream outputs, both layouts, strictness, errors."""

import json
import shutil

import pytest
import torch
from diffusers.pipelines.ace_step.modeling_ace_step import AceStepConditionEncoder
from safetensors.torch import load_file, save_file

from housevox.acestep import AceStepConfig, load_condition_encoder, load_dit, load_silence_latent, load_text_encoder, load_vae
from housevox.acestep.fixture import make_fixture
from housevox.acestep.info import main as info_main
from housevox.acestep.modules import build_condition_encoder, build_dit
from housevox.acestep.presets import PRESETS
from housevox.errors import HousevoxError, run_cli

ENCODER_ARGS = (
    "text_hidden_states", "text_attention_mask", "lyric_hidden_states", "lyric_attention_mask",
    "refer_audio_acoustic_hidden_states_packed", "refer_audio_order_mask",
)


def _dit_velocity(dit, ref, case):
    with torch.no_grad():
        return dit(ref[f"{case}.hidden_states"], ref[f"{case}.timestep"], ref[f"{case}.timestep_r"],
                   ref[f"{case}.encoder_hidden_states"], ref[f"{case}.context_latents"])


@pytest.mark.parametrize("case", ["cond", "null", "b2_odd"])
def test_dit_matches_upstream_reference(upstream_tiny, case):
    dit = load_dit(upstream_tiny, dtype=torch.float32)
    ref = load_file(upstream_tiny / "reference.safetensors")
    velocity = _dit_velocity(dit, ref, case)
    assert velocity.shape == ref[f"{case}.velocity"].shape
    assert (velocity - ref[f"{case}.velocity"]).abs().max().item() <= 1e-4


def test_padded_masked_batch_gives_each_segment_its_velocity_alone(upstream_tiny):
    """4 conditions of different lengths, padded to the longest and masked: each row = that segment run alone, unpadded."""
    dit = load_dit(upstream_tiny, dtype=torch.float32)
    cfg = dit.config
    gen = torch.Generator().manual_seed(7)
    lengths, frames = [5, 17, 9, 12], 21
    x = torch.randn(4, frames, cfg.audio_acoustic_hidden_dim, generator=gen)
    ctx = torch.randn(4, frames, cfg.in_channels - cfg.audio_acoustic_hidden_dim, generator=gen)
    t = torch.tensor([0.9, 0.2, 0.5, 0.7])
    conds = [torch.randn(n, cfg.encoder_hidden_size, generator=gen) for n in lengths]
    padded = torch.full((4, max(lengths), cfg.encoder_hidden_size), 1e3)  # loud padding: it must not leak
    mask = torch.zeros(4, max(lengths), dtype=torch.bool)
    for i, c in enumerate(conds):
        padded[i, : len(c)], mask[i, : len(c)] = c, True
    with torch.no_grad():
        batched = dit(x, t, t, padded, ctx, encoder_attention_mask=mask)
        alone = torch.cat([dit(x[i:i + 1], t[i:i + 1], t[i:i + 1], conds[i][None], ctx[i:i + 1]) for i in range(4)])
        unmasked = dit(x, t, t, padded, ctx)
    assert (batched - alone).abs().max().item() <= 1e-5
    assert (unmasked - alone).abs().max().item() > 1e-2, "the padding is loud enough that a missing mask shows"


def _encoder_error(encoder, ref, case):
    with torch.no_grad():
        hidden, mask = encoder(**{name: ref[f"{case}.{name}"] for name in ENCODER_ARGS})
    ref_mask = ref[f"{case}.encoder_attention_mask"]
    assert torch.equal(mask.bool(), ref_mask.bool())
    return (hidden - ref[f"{case}.encoder_hidden_states"])[ref_mask.bool()].abs().max().item()


@pytest.mark.parametrize("case", ["cond", "b2_pad"])
def test_condition_encoder_matches_upstream_reference(upstream_tiny, case):
    encoder = load_condition_encoder(upstream_tiny, dtype=torch.float32)
    ref = load_file(upstream_tiny / "encoder_reference.safetensors")
    assert _encoder_error(encoder, ref, case) <= 1e-4


def test_plain_diffusers_encoder_is_not_faithful_on_xl(upstream_tiny):
    """The reason housevox carries its own timbre pooling: diffusers' class misses the XL special token."""
    ours = load_condition_encoder(upstream_tiny)
    plain = AceStepConditionEncoder(**AceStepConfig.from_upstream(json.loads((upstream_tiny / "config.json").read_text())).condition_encoder_kwargs())
    plain.load_state_dict({k: v for k, v in ours.state_dict().items() if k != "silence_latent"}, strict=False)
    ref = load_file(upstream_tiny / "encoder_reference.safetensors")
    assert _encoder_error(plain.eval(), ref, "cond") > 1e-2


def test_xl_config_on_meta_device():
    cfg = AceStepConfig.from_upstream(PRESETS["xl"])
    dit = build_dit(cfg)
    params = sum(p.numel() for p in dit.parameters())
    assert 4.1e9 < params < 4.25e9
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers) == (2560, 9728, 32)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.encoder_hidden_size) == (32, 8, 128, 2048)
    assert cfg.variant == "xl-base" and cfg.xl_layout
    assert build_condition_encoder(cfg).null_condition_emb.shape == (1, 1, 2048)


def test_2b_config_has_condition_width_equal_to_hidden():
    cfg = AceStepConfig.from_upstream(PRESETS["2b"])
    assert cfg.variant == "2b-base" and not cfg.xl_layout and cfg.encoder_hidden_size == cfg.hidden_size == 2048
    turbo = AceStepConfig.from_upstream({**PRESETS["2b"], "is_turbo": True, "model_version": "turbo"})
    assert turbo.variant == "2b-turbo"
    plain = {k: v for k, v in PRESETS["2b"].items() if not k.startswith("timestep_")}
    assert (AceStepConfig.from_upstream(plain).timestep_mu, AceStepConfig.from_upstream(plain).timestep_sigma) == (-0.4, 1.0)


@pytest.mark.parametrize("preset", ["tiny", "tiny-2b"])
@pytest.mark.parametrize("shard_mb", [0.25, 64])
def test_fixture_round_trips_through_the_loader(tmp_path, preset, shard_mb):
    ckpt = make_fixture(tmp_path / "ckpt", preset=preset, seed=3, shard_mb=shard_mb, with_aux=False)
    sharded = (ckpt / "model.safetensors.index.json").exists()
    assert sharded == (shard_mb < 1)
    dit = load_dit(ckpt)
    encoder = load_condition_encoder(ckpt)
    cfg = AceStepConfig.from_upstream(PRESETS[preset])
    assert encoder.null_condition_emb.shape[-1] == cfg.encoder_hidden_size
    assert encoder.timbre_encoder.prepend_special_token == cfg.xl_layout
    assert encoder.silence_latent.shape == (1, 3000, cfg.timbre_hidden_dim)
    x = torch.randn(1, 10, cfg.audio_acoustic_hidden_dim)
    ctx = torch.randn(1, 10, 2 * cfg.audio_acoustic_hidden_dim)
    cond = torch.randn(1, 5, cfg.encoder_hidden_size)
    with torch.no_grad():
        v = dit(x, torch.tensor([0.5]), torch.tensor([0.5]), cond, ctx)
    assert v.shape == x.shape and torch.isfinite(v).all()


def test_loads_into_bf16_without_fp32_copy(tiny_checkpoint):
    dit = load_dit(tiny_checkpoint, dtype=torch.bfloat16)
    assert {p.dtype for p in dit.parameters()} == {torch.bfloat16}
    assert not any(p.is_meta for p in dit.parameters())
    assert not any(p.requires_grad for p in dit.parameters())


def test_vae_and_text_encoder_load(tiny_checkpoint):
    vae = load_vae(tiny_checkpoint)
    audio = torch.randn(1, 2, 48000)
    with torch.no_grad():
        latents = vae.encode(audio).latent_dist.mean
    assert latents.shape == (1, 4, 25)
    model, tokenizer = load_text_encoder(tiny_checkpoint)
    ids = tokenizer("# Caption\nhouse music<|endoftext|>", return_tensors="pt").input_ids
    assert ids[0, -1].item() == tokenizer.eos_token_id
    assert model(input_ids=ids).last_hidden_state.shape == (1, ids.shape[1], 32)


def test_silence_latent_is_transposed(tiny_checkpoint):
    raw = torch.load(tiny_checkpoint / "silence_latent.pt", weights_only=True)
    silence = load_silence_latent(tiny_checkpoint)
    assert silence.shape == (1, raw.shape[2], raw.shape[1])
    assert torch.equal(silence[0, 7], raw[0, :, 7])


def test_diffusers_layout_loads_the_same_weights(tmp_path, tiny_checkpoint):
    dit, encoder = load_dit(tiny_checkpoint), load_condition_encoder(tiny_checkpoint)
    root = tmp_path / "diffusers"
    for name, module in (("transformer", dit), ("condition_encoder", encoder)):
        (root / name).mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, root / name / "diffusion_pytorch_model.safetensors")
        (root / name / "config.json").write_text(json.dumps(dict(module.config)))
    shutil.copytree(tiny_checkpoint / "vae", root / "vae")
    (root / "model_index.json").write_text(json.dumps({"transformer": ["diffusers", "AceStepTransformer1DModel"],
                                                       "condition_encoder": ["diffusers", "AceStepConditionEncoder"]}))
    dit2, encoder2 = load_dit(root), load_condition_encoder(root)
    for a, b in ((dit, dit2), (encoder, encoder2)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert encoder2.timbre_encoder.prepend_special_token
    dit_config = json.loads((root / "transformer" / "config.json").read_text())
    del dit_config["encoder_hidden_size"]  # width known only from condition_encoder/config.json
    (root / "transformer" / "config.json").write_text(json.dumps(dit_config))
    assert load_condition_encoder(root).timbre_encoder.prepend_special_token
    assert torch.equal(load_dit(root).condition_embedder.weight, dit.condition_embedder.weight)


def _info_error(path, capsys) -> str:
    code = run_cli(info_main, [str(path)])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "Traceback" not in err and len(err.splitlines()) == 1
    return err


def test_info_describes_a_checkpoint(tiny_checkpoint, capsys):
    assert run_cli(info_main, [str(tiny_checkpoint)]) == 0
    out = capsys.readouterr().out
    assert "XL condition-encoder layout" in out and "3 shard(s)" in out
    assert "missing:      nothing" in out


def test_bad_folders_give_one_line_errors(tmp_path, tiny_checkpoint, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "not an ACE-Step v1.5 checkpoint" in _info_error(empty, capsys)

    wrong = tmp_path / "llama"
    wrong.mkdir()
    (wrong / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 10}))
    assert "config.json" in _info_error(wrong, capsys)

    def copy(name):
        dst = tmp_path / name
        shutil.copytree(tiny_checkpoint, dst)
        return dst, sorted(dst.glob("model-*.safetensors"))

    missing, shards = copy("missing")
    shards[1].unlink()
    assert f"missing shard {shards[1].name}" in _info_error(missing, capsys)

    for name, cut in (("trunc_header", 100), ("trunc_data", -4096)):
        torn, shards = copy(name)
        data = shards[0].read_bytes()
        shards[0].write_bytes(data[:cut])
        assert shards[0].name in _info_error(torn, capsys)

    extra, shards = copy("extra")
    tensors = load_file(shards[0])
    tensors["decoder.mystery.weight"] = torch.zeros(2)
    save_file(tensors, shards[0])
    index = json.loads((extra / "model.safetensors.index.json").read_text())
    index["weight_map"]["decoder.mystery.weight"] = shards[0].name
    (extra / "model.safetensors.index.json").write_text(json.dumps(index))
    assert "decoder.mystery.weight" in _info_error(extra, capsys)

    shaped, shards = copy("shape")
    tensors = load_file(shards[-1])
    key = next(iter(tensors))
    tensors[key] = torch.zeros(3, 3, 3)
    save_file(tensors, shards[-1])
    assert key in _info_error(shaped, capsys) and "shape" in _info_error(shaped, capsys)


def test_missing_key_is_named(tmp_path, tiny_checkpoint):
    dst = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint, dst)
    shard = sorted(dst.glob("model-*.safetensors"))[0]
    tensors = load_file(shard)
    dropped = next(k for k in tensors if k.startswith(("decoder.", "encoder.")))
    del tensors[dropped]
    save_file(tensors, shard)
    with pytest.raises(HousevoxError, match="missing key"):
        load_dit(dst)


def test_torch_load_always_weights_only():
    import housevox
    from pathlib import Path

    for path in Path(housevox.__file__).parent.rglob("*.py"):
        for line in path.read_text().splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{path}: {line.strip()}"
