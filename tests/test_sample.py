"""`python -m housevox.sample` and the training AudioPreview, on the tiny checkpoint (CPU, 2 s, 2 steps)."""

import contextlib
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import soundfile as sf
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from housevox.acestep import load_dit, load_null_condition
from housevox.acestep.conditioning import ConditionBuilder
from housevox.acestep.config import AceStepConfig
from housevox.acestep.modules import build_dit
from housevox.acestep.presets import PRESETS
from housevox.data.cache import build_cache, entry_path, load_entry, read_index
from housevox.errors import run_cli
from housevox.lora import LoRASettings, apply_lora, extract_lora, write_comfyui_file, write_peft_folder
from housevox.generate import Take, encode_take, write_wav
from housevox.sample import check_args, main, parse_args, read_lyrics
from housevox.train.preview import AudioPreview

FAST = ["--duration", "2", "--guidance-scale", "3.0"]
FRAMES_2S = 50 * 1920


def trained_lora(dit, seed: int = 1):
    """Stand-in for a trained adapter: LoRA on every default target, small random B."""
    apply_lora(dit, LoRASettings(rank=4, alpha=4))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in dit.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
    weights = extract_lora(dit)
    weights.metadata.update(num_inference_steps="3", shift="3.0")
    return weights


@pytest.fixture(scope="module")
def loras(tiny_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    weights = trained_lora(load_dit(tiny_checkpoint))
    wider = AceStepConfig.from_upstream({**PRESETS["tiny"], "hidden_size": 96, "intermediate_size": 192})
    other = trained_lora(build_dit(wider, device="cpu"))  # as an XL LoRA (hidden 2560) meets a 2B model (2048)
    return SimpleNamespace(
        comfy=write_comfyui_file(root / "house.safetensors", weights, dtype=torch.float32),
        peft=write_peft_folder(root / "peft", weights),
        other_size=write_comfyui_file(root / "wider.safetensors", other),
    )


def sample(capsys, ckpt, out, *extra):
    code = run_cli(main, ["--checkpoint-dir", str(ckpt), "--out", str(out), *FAST, *extra])
    return code, capsys.readouterr().err


def audio(path):
    return sf.read(path, dtype="int32")[0]


def test_renders_valid_deterministic_wav(tiny_checkpoint, tmp_path, capsys):
    lyrics = tmp_path / "lyrics.txt"
    lyrics.write_text("[Verse]\nYou took your love away from me\n")
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        assert sample(capsys, tiny_checkpoint, tmp_path / f"{name}.wav", "--seed", seed, "--steps", "2",
                      "--lyrics", str(lyrics), "--bpm", "122", "--key", "A minor")[0] == 0
    info = sf.info(tmp_path / "a.wav")
    assert (info.samplerate, info.channels, info.subtype, info.format) == (48000, 2, "PCM_24", "WAV")
    assert info.frames == FRAMES_2S
    assert (tmp_path / "a.wav").read_bytes() == (tmp_path / "b.wav").read_bytes()
    assert not (audio(tmp_path / "a.wav") == audio(tmp_path / "c.wav")).all()
    settings = json.loads((tmp_path / "a.wav.json").read_text())
    assert json.loads(sf.SoundFile(tmp_path / "a.wav").comment) == settings
    assert settings["lyrics"] == lyrics.read_text() and settings["seed"] == 7
    assert (settings["guidance"], settings["guidance_scale"], settings["dcw"], settings["chunk_mask"]) == ("apg", 3.0, True, 2.0)
    assert not list(tmp_path.glob(".*.tmp"))


def test_sampler_flags_are_recorded_and_heard(tiny_checkpoint, tmp_path, capsys):
    """Each of --guidance, --no-dcw, --chunk-mask changes the take and lands in its settings."""
    takes = {"default": [], "cfg": ["--guidance", "cfg"], "no_dcw": ["--no-dcw"], "mask1": ["--chunk-mask", "1"],
             "auto": ["--chunk-mask", "auto"]}
    for name, extra in takes.items():
        assert sample(capsys, tiny_checkpoint, tmp_path / f"{name}.wav", "--steps", "2", *extra)[0] == 0
    settings = {name: json.loads((tmp_path / f"{name}.wav.json").read_text()) for name in takes}
    assert settings["cfg"]["guidance"] == "cfg" and settings["no_dcw"]["dcw"] is False
    assert (settings["mask1"]["chunk_mask"], settings["auto"]["chunk_mask"]) == (1.0, 2.0)
    assert (tmp_path / "auto.wav").read_bytes() == (tmp_path / "default.wav").read_bytes()
    for name in ("cfg", "no_dcw", "mask1"):
        assert not (audio(tmp_path / f"{name}.wav") == audio(tmp_path / "default.wav")).all(), name


def test_preview_does_not_import_the_cli():
    code = "import sys, housevox.train.preview; assert 'housevox.sample' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_scale_set_and_lora_defaults(tiny_checkpoint, loras, tmp_path, capsys):
    assert sample(capsys, tiny_checkpoint, tmp_path / "take.wav", "--lora", str(loras.comfy),
                  "--lora-scale", "0", "1.0")[0] == 0
    assert sorted(p.name for p in tmp_path.glob("*.wav")) == ["take_scale0.00.wav", "take_scale1.00.wav"]
    settings = json.loads((tmp_path / "take_scale1.00.wav.json").read_text())
    assert (settings["lora_scale"], settings["steps"], settings["shift"]) == (1.0, 3, 3.0)  # from the LoRA header

    assert sample(capsys, tiny_checkpoint, tmp_path / "base.wav", "--steps", "3", "--shift", "3")[0] == 0
    assert (audio(tmp_path / "take_scale0.00.wav") == audio(tmp_path / "base.wav")).all()
    lora_1 = audio(tmp_path / "take_scale1.00.wav")
    assert not (lora_1 == audio(tmp_path / "base.wav")).all()

    assert sample(capsys, tiny_checkpoint, tmp_path / "peft.wav", "--lora", str(loras.peft))[0] == 0
    assert (audio(tmp_path / "peft.wav") == lora_1).all()  # same fp32 weights in another layout, same take


def test_conditioning_equals_the_built_cache(tiny_checkpoint, tmp_path):
    """The sampler's condition is bitwise what the segment trains on; its uncond is training's CFG-dropout null."""
    row = {"file": "seg.wav", "track": "t1", "caption": "deep house, classic house piano chord",
           "lyrics": "[Verse] left me dancing with your memory", "bpm": 122, "key": "A minor",
           "timesignature": "4", "language": "en"}
    noise = torch.randn(1_440_000, 2, generator=torch.Generator().manual_seed(0)) * 0.1
    sf.write(tmp_path / "seg.wav", noise.numpy(), 48000, subtype="PCM_16")
    (tmp_path / "manifest.jsonl").write_text(json.dumps(row) + "\n")
    build_cache(tmp_path, tiny_checkpoint, tmp_path / "cache")
    entry = read_index(tmp_path / "cache")[0]
    take = Take(caption=row["caption"], lyrics=row["lyrics"], bpm=row["bpm"], key=row["key"],
                timesignature=row["timesignature"], language=row["language"], duration_s=30.0)
    cond, uncond = encode_take(ConditionBuilder.from_checkpoint(tiny_checkpoint), take)
    assert torch.equal(cond, load_entry(entry_path(tmp_path / "cache", entry["key"]))["encoder_hidden_states"])
    assert torch.equal(uncond, load_null_condition(tiny_checkpoint)[0].expand_as(cond))


@pytest.mark.parametrize("case, expected", [
    ("missing checkpoint", "checkpoint folder does not exist"),
    ("missing lora", "no such file"),
    ("corrupt lora", "not a readable safetensors"),
    ("other model size", "another model size"),
    ("zero duration", "--duration 0"),
    ("long duration", "--duration 601"),
    ("zero steps", "--steps 0"),
    ("scale without lora", "--lora-scale needs --lora"),
    ("unknown meter", "--timesignature '7/8' is not a time signature ACE-Step knows"),
    ("unknown key", "--key 'H minor' is not a key like"),
])
def test_errors_are_one_line(case, expected, tiny_checkpoint, loras, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    ckpt, extra = tiny_checkpoint, {
        "missing checkpoint": [], "missing lora": ["--lora", str(tmp_path / "nope.safetensors")],
        "corrupt lora": ["--lora", str(corrupt)], "other model size": ["--lora", str(loras.other_size)],
        "zero duration": ["--duration", "0"], "long duration": ["--duration", "601"], "zero steps": ["--steps", "0"],
        "scale without lora": ["--lora-scale", "0.5"], "unknown meter": ["--timesignature", "7/8"],
        "unknown key": ["--key", "H minor"],
    }[case]
    if case == "missing checkpoint":
        ckpt = tmp_path / "no-such-checkpoint"
    code, err = sample(capsys, ckpt, tmp_path / "x.wav", *extra)
    assert code != 0
    assert err.count("\n") == 1 and err.startswith("error: ") and expected in err, err
    assert not (tmp_path / "x.wav").exists()


def test_typed_metas_are_written_as_ace_step_spells_them():
    args = parse_args(["--checkpoint-dir", "ckpt", "--out", "take.wav", "--key", "f#m", "--timesignature", "6/8", "--bpm", "124"])
    check_args(args)
    assert (args.key, args.timesignature, args.bpm) == ("F# minor", "6", 124)


def test_lyrics_file_or_literal(tmp_path):
    path = tmp_path / "lyrics.txt"
    path.write_text("[Verse] la la")
    assert read_lyrics(str(path)) == "[Verse] la la"
    assert read_lyrics(str(tmp_path / "missing.txt")) == str(tmp_path / "missing.txt")  # not a file: literal text
    assert read_lyrics(None) is None


def test_long_lyrics_keep_a_readable_comment(tmp_path):
    settings = {"caption": "house", "lyrics": "la " * 2000, "seed": 1}
    write_wav(tmp_path / "x.wav", torch.zeros(2, 480), settings)
    comment = json.loads(sf.SoundFile(tmp_path / "x.wav").comment)
    assert "lyrics" not in comment and len(comment["lyrics_sha256"]) == 64 and comment["seed"] == 1
    assert json.loads((tmp_path / "x.wav.json").read_text()) == settings


def test_audio_preview_writes_wav_and_tensorboard_audio(tiny_checkpoint, loras, tmp_path):
    dit = load_dit(tiny_checkpoint)
    trained_lora(dit)
    dit.train()
    hparams = SimpleNamespace(sample_every_n_epochs=2, num_inference_steps=50, shift=1.0,
                              checkpoint_dir=str(tiny_checkpoint))
    logger = TensorBoardLogger(tmp_path, name="run")
    rows = [{"caption": "deep house, rhythmic bassline", "lyrics": None, "bpm": 120, "keyscale": "F minor"}]
    trainer = SimpleNamespace(current_epoch=0, global_step=5, logger=logger, loggers=[logger],
                              datamodule=SimpleNamespace(train_set=SimpleNamespace(entries=rows)))
    preview = AudioPreview(duration_s=2.0, max_steps=2)
    module = SimpleNamespace(hparams=hparams, dit=dit)
    preview.on_train_epoch_end(trainer, module)  # epoch 1 of every 2: nothing
    samples = tmp_path / "run" / "version_0" / "samples"
    assert not samples.exists()

    trainer.current_epoch, trainer.global_step = 1, 10
    preview.on_train_epoch_end(trainer, module)
    wav = samples / "epoch_002.wav"
    assert sf.info(wav).frames == FRAMES_2S and dit.training
    settings = json.loads(wav.with_name(wav.name + ".json").read_text())
    assert (settings["caption"], settings["key"]) == (rows[0]["caption"], "F minor")
    assert (settings["steps"], settings["seed"], settings["guidance"], settings["dcw"]) == (2, 42, "apg", True)
    logger.experiment.flush()
    events = EventAccumulator(logger.log_dir)
    events.Reload()
    assert events.Tags()["audio"] == ["preview"]
    assert events.Audio("preview")[0].step == 10


def test_borrowed_renderer_frees_its_parts_when_the_block_ends(tiny_checkpoint):
    """Freed on leaving the block (where the callbacks' gc.collect and empty_cache run), not when a name goes."""
    import gc
    import weakref

    from housevox.generate import borrowed_renderer

    dit = load_dit(tiny_checkpoint)
    for mode, failure in ((True, None), (False, RuntimeError("render failed"))):
        dit.train(mode)
        with pytest.raises(RuntimeError) if failure else contextlib.nullcontext():
            with borrowed_renderer(dit, tiny_checkpoint) as renderer:
                parts = [weakref.ref(renderer.vae), weakref.ref(renderer.builder), weakref.ref(renderer.silence_latent)]
                assert not dit.training
                if failure:
                    raise failure
        gc.disable()  # nothing after the block may be what frees them
        try:
            assert renderer is not None and all(part() is None for part in parts)
        finally:
            gc.enable()
        assert dit.training == mode
