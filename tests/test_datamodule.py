"""DataModule over a synthetic cache (no encoders): track split, padded batches, seeded order, split-invariant steps, resume skip."""

import hashlib
import inspect
import logging

import docstring_parser
import pytest
import torch
from lightning.fabric.utilities.data import _set_sampler_epoch

from housevox.atomic import save_safetensors, write_json
from housevox.data import CACHE_FORMAT_VERSION, SeededBatchSampler, SegmentCacheDataModule
from housevox.data.cache import entry_path
from housevox.errors import HousevoxError


def fake_cache(root, segments_per_track: dict[str, int], lengths=(6, 9)):
    """A segments folder with an empty manifest and a cache of random entries; L alternates per track."""
    seg = root / "segments"
    seg.mkdir(parents=True)
    (seg / "manifest.jsonl").write_text("")
    entries = []
    for t, (track, n) in enumerate(sorted(segments_per_track.items())):
        length = lengths[t % len(lengths)]
        for i in range(n):
            key = hashlib.sha256(f"{track}/{i}".encode()).hexdigest()
            tensors = {"target_latents": torch.randn(750, 4), "encoder_hidden_states": torch.randn(length, 8),
                       "encoder_attention_mask": torch.ones(length, dtype=torch.bool), "context_latents": torch.randn(750, 8)}
            save_safetensors(tensors, entry_path(seg / "cache", key), {"key": key, "format_version": str(CACHE_FORMAT_VERSION)})
            entries.append({"key": key, "file": f"{track}_{i:03d}.wav", "track": track, "T": 750, "L": length,
                            "caption": track})
    write_json(seg / "cache" / "index.json", {"format_version": CACHE_FORMAT_VERSION, "checkpoint_fingerprint": "x",
                                              "entries": entries})
    return seg


def make_dm(seg, **kwargs):
    dm = SegmentCacheDataModule(str(seg), "unused-checkpoint", **kwargs)
    dm.setup("fit")
    return dm


def tracks_of(dataset):
    return {row["track"] for row in dataset.entries}


@pytest.fixture()
def many_tracks(tmp_path):
    return fake_cache(tmp_path, {f"track{t:02d}": 1 + t % 4 for t in range(12)})


@pytest.mark.parametrize("val_fraction", [0.0, 0.1, 0.3, 0.5, 0.99])
def test_split_never_leaks_a_track(many_tracks, val_fraction):
    dm = make_dm(many_tracks, val_fraction=val_fraction)
    train, val = tracks_of(dm.train_set), tracks_of(dm.val_set)
    assert not train & val and len(train | val) == 12 and train
    assert len(val) == min(11, max(int(val_fraction > 0), round(val_fraction * 12)))
    again = make_dm(many_tracks, val_fraction=val_fraction, seed=123)
    assert tracks_of(again.val_set) == val  # the split ignores the run seed


def test_explicit_val_tracks_and_their_errors(many_tracks):
    dm = make_dm(many_tracks, val_tracks=["track03", "track07"])
    assert tracks_of(dm.val_set) == {"track03", "track07"} and not tracks_of(dm.train_set) & {"track03", "track07"}
    with pytest.raises(HousevoxError, match="data.val_tracks: 'nope'"):
        make_dm(many_tracks, val_tracks=["nope"])
    with pytest.raises(HousevoxError, match="leave at least one"):
        make_dm(many_tracks, val_tracks=[f"track{t:02d}" for t in range(12)])


def test_single_track_trains_and_says_val_is_empty(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="housevox.data.datamodule"):
        dm = make_dm(fake_cache(tmp_path, {"only": 3}), val_fraction=0.5)
    assert len(dm.train_set) == 3 and len(dm.val_set) == 0
    assert any("validation is empty" in r.message for r in caplog.records)
    assert list(dm.val_dataloader()) == []


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_train_batches_pad_any_lengths_and_cover_the_epoch(many_tracks, batch_size):
    dm = make_dm(many_tracks, batch_size=batch_size, val_fraction=0.0)
    loader = dm.train_dataloader()
    seen, mixed = [], 0
    for batch in loader:
        lengths = [dm.train_set.entries[int(i)]["L"] for i in batch["index"]]
        assert batch["encoder_hidden_states"].shape[1] == batch["encoder_attention_mask"].shape[1] == max(lengths)
        assert batch["encoder_attention_mask"].sum(dim=1).tolist() == lengths
        assert batch["padded"] == (len(set(lengths)) > 1)
        for row, i in enumerate(batch["index"]):
            real = dm.train_set[int(i)]["encoder_hidden_states"]
            assert torch.equal(batch["encoder_hidden_states"][row, : len(real)], real)
        assert batch["target_latents"].shape[1:] == (750, 4) and batch["context_latents"].shape[1:] == (750, 8)
        assert len(batch["index"]) <= batch_size
        mixed += batch["padded"]
        seen += batch["index"].tolist()
    assert sorted(seen) == list(range(len(dm.train_set)))
    assert len(loader) == dm.train_batches_per_epoch() == len(list(loader)) == -(-len(dm.train_set) // batch_size)
    assert batch_size == 1 or mixed, "lengths 6 and 9 never shared a batch: nothing was padded"


def test_each_step_gets_the_same_samples_at_any_split():
    """b × k: the window of b·k samples is the same for 1 × 4, 2 × 2, 4 × 1; inside it, similar L batch together."""
    keys = [(750, [9, 6, 12, 6, 9][i % 5]) for i in range(22)]

    def steps(b, k):
        sampler = SeededBatchSampler(keys, b, seed=5, accumulate=k)
        sampler.set_epoch(2)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        return [sorted(sum(batches[j:j + k], [])) for j in range(0, len(batches), k)], batches

    reference, _ = steps(1, 4)
    for b, k in ((4, 1), (2, 2)):
        windows, batches = steps(b, k)
        assert windows == reference
        for batch in batches:
            assert [keys[i] for i in batch] == sorted(keys[i] for i in batch)
    assert [len(w) for w in reference] == [4] * 5 + [2], "the short last step holds the leftover samples"
    _, pairs = steps(2, 2)
    assert all(keys[a][1] <= keys[b][1] for (a, *_), (b, *_) in zip(pairs[::2], pairs[1::2])), "shortest L first"


def test_order_depends_only_on_seed_and_epoch():
    keys = [(750, 6 + i % 2) for i in range(20)]

    def order(seed, epoch):
        sampler = SeededBatchSampler(keys, 2, seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(0, 1) == order(0, 1)
    assert order(0, 1) != order(0, 2) and order(0, 1) != order(1, 1)
    fixed = SeededBatchSampler(keys, 2, seed=0, shuffle=False)
    first = list(fixed)
    fixed.set_epoch(5)
    assert list(fixed) == first == [[2 * i, 2 * i + 1] for i in range(10)]


def test_start_batch_skips_exactly_k_batches_of_that_epoch_only():
    sampler = SeededBatchSampler([(750, 6)] * 7, 2, seed=3)
    sampler.set_epoch(4)
    full = list(sampler)
    sampler.set_start_batch(3)
    assert list(sampler) == full[3:] and len(full) == 4
    assert len(sampler) == len(full), "len stays a whole epoch: Lightning counts resumed batches itself"
    sampler.set_epoch(5)
    assert len(list(sampler)) == len(sampler) == 4


def test_lightning_reaches_set_epoch_through_the_loader(many_tracks):
    dm = make_dm(many_tracks, val_fraction=0.0, seed=9)
    loader = dm.train_dataloader()
    epoch0 = [b["index"].tolist() for b in loader]
    _set_sampler_epoch(loader, 1)  # what Lightning's fit loop calls at each epoch start
    assert loader.batch_sampler.epoch == 1 and [b["index"].tolist() for b in loader] != epoch0


def test_val_loader_is_fixed_order(many_tracks):
    dm = make_dm(many_tracks, val_fraction=0.5, batch_size=2)
    runs = []
    for epoch in (0, 3):
        loader = dm.val_dataloader()
        _set_sampler_epoch(loader, epoch)
        runs.append([b["index"].tolist() for b in loader])
    assert runs[0] == runs[1] and runs[0]


def test_corrupt_entry_raises_and_is_removed_for_rebuild(many_tracks):
    dm = make_dm(many_tracks, val_fraction=0.0)
    path = entry_path(dm.cache_dir, dm.train_set.entries[0]["key"])
    path.write_bytes(path.read_bytes()[:-64])
    with pytest.raises(HousevoxError, match=f"{path.name}.*run again to rebuild"):
        dm.train_set[0]
    assert not path.exists()


def test_bad_segments_dir_names_the_field(tmp_path):
    with pytest.raises(HousevoxError, match=f"data.segments_dir: {tmp_path / 'nope'}"):
        SegmentCacheDataModule(str(tmp_path / "nope"), "ckpt")
    with pytest.raises(HousevoxError, match="data.segments_dir: .*no manifest.jsonl"):
        SegmentCacheDataModule(str(tmp_path), "ckpt")


def test_setup_without_cache_says_to_build_it(tmp_path):
    (tmp_path / "manifest.jsonl").write_text("")
    dm = SegmentCacheDataModule(str(tmp_path), "ckpt")
    assert dm.cache_dir == tmp_path / "cache"
    with pytest.raises(HousevoxError, match="no cache index"):
        dm.setup("fit")


def test_every_init_parameter_is_documented_for_the_cli_help():
    documented = {p.arg_name: p.description for p in docstring_parser.parse(inspect.getdoc(SegmentCacheDataModule)).params}
    params = [p for p in inspect.signature(SegmentCacheDataModule.__init__).parameters if p != "self"]
    assert params and all(documented.get(p) for p in params)


def test_dataset_hash_changes_with_the_data(tmp_path, many_tracks):
    a = make_dm(many_tracks).dataset_hash()
    b = make_dm(fake_cache(tmp_path / "other", {"track00": 2})).dataset_hash()
    assert len(a) == 16 and a != b and make_dm(many_tracks).dataset_hash() == a


def test_ddp_ranks_split_batches_without_overlap():
    keys = [(750, 6)] * 7
    ranks = [SeededBatchSampler(keys, 2, seed=1, num_replicas=2, rank=r) for r in (0, 1)]
    for sampler in ranks:
        sampler.set_epoch(3)
    batches = [list(sampler) for sampler in ranks]
    assert len(batches[0]) == len(batches[1]) == len(ranks[0]) == 2
    single = SeededBatchSampler(keys, 2, seed=1)
    single.set_epoch(3)
    assert sorted(map(tuple, batches[0] + batches[1])) == sorted(map(tuple, list(single)))


def test_restored_position_starts_the_train_loader_there(many_tracks):
    dm = make_dm(many_tracks, val_fraction=0.0, seed=4)
    loader = dm.train_dataloader()
    loader.batch_sampler.set_epoch(2)
    whole = [b["index"].tolist() for b in loader]
    dm.load_state_dict({"epoch": 2, "batches_done": 1})
    assert [b["index"].tolist() for b in dm.train_dataloader()] == whole[1:]
    dm.load_state_dict({"epoch": 2, "batches_done": len(whole)})
    assert dm.train_dataloader().batch_sampler.epoch == 3
