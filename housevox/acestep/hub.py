"""ACE-Step v1.5 models by hub name, fetched on first use into huggingface_hub's own cache.

`acestep-v15-xl-base`, `ACE-Step/acestep-v15-xl-base` or `…@revision` names a DiT repo; the VAE and
the text encoder come from `ACE-Step/Ace-Step1.5` (its `vae/` and `Qwen3-Embedding-0.6B/` subfolders
only), the repos upstream's downloader (`acestep/model_downloader.py`) fetches. Every download is
huggingface_hub's `snapshot_download` (progress bars, resumable, one cache shared with every other
hub tool); with HF_HUB_OFFLINE=1 or no network it answers from the cache, and anything missing stops
the run with one line naming it and the command that fetches it.
"""

import functools
from dataclasses import dataclass
from pathlib import Path

from housevox.errors import HousevoxError
from housevox.jsonfile import read_json_object

HUB_ORG = "ACE-Step"
SHARED_REPO = "ACE-Step/Ace-Step1.5"
VAE_DIRNAME = "vae"
TEXT_ENCODER_DIRNAME = "Qwen3-Embedding-0.6B"
# DiT name -> (repo, subfolder): upstream's SUBMODEL_REGISTRY, plus the turbo DiT that lives inside the main repo.
DIT_REPOS = {
    **{name: (f"{HUB_ORG}/{name}", "") for name in (
        "acestep-v15-xl-base", "acestep-v15-xl-sft", "acestep-v15-xl-turbo", "acestep-v15-base", "acestep-v15-sft",
        "acestep-v15-turbo-shift1", "acestep-v15-turbo-shift3", "acestep-v15-turbo-continuous")},
    "acestep-v15-turbo": (SHARED_REPO, "acestep-v15-turbo"),
}
DIT_PATTERNS = ("*.json", "*.safetensors", "silence_latent.pt")  # what housevox reads of a DiT repo
# Files each part cannot load without (sharded weights are checked against their index by checkpoint.py).
REQUIRED = {
    "DiT": ("config.json", "silence_latent.pt"),
    VAE_DIRNAME: ("config.json", "diffusion_pytorch_model.safetensors"),
    TEXT_ENCODER_DIRNAME: ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"),
}


@dataclass(frozen=True)
class HubRef:
    """Folders of one hub repo (none: the DiT files at its root) at a revision (None: the default branch)."""

    repo_id: str
    subfolders: tuple[str, ...] = ()
    revision: str | None = None

    @property
    def subfolder(self) -> str:
        return self.subfolders[0] if self.subfolders else ""

    def patterns(self) -> list[str]:
        return [f"{folder}/*" for folder in self.subfolders] or list(DIT_PATTERNS)

    def fetch_command(self) -> str:
        include = "".join(f' --include "{folder}/*"' for folder in self.subfolders)
        revision = f" --revision {self.revision}" if self.revision else ""
        return f"hf download {self.repo_id}{include}{revision}"


@dataclass(frozen=True)
class HubCheckpoint:
    """Where a hub-named checkpoint's parts lie in the cache, and the commits they came from."""

    name: str
    dit_dir: Path
    vae_dir: Path
    text_encoder_dir: Path
    sources: dict  # part -> "repo@commit" or "repo@commit:subfolder/"


def parse_model_name(value: str) -> HubRef | None:
    """The DiT repo a model name means, or None when `value` is not an ACE-Step v1.5 model name."""
    name, at, revision = str(value).partition("@")
    org, slash, short = name.rpartition("/")
    if (slash and org != HUB_ORG) or short not in DIT_REPOS or (at and not revision):
        return None
    repo_id, subfolder = DIT_REPOS[short]
    return HubRef(repo_id, (subfolder,) if subfolder else (), revision or None)


def model_names() -> str:
    return ", ".join(DIT_REPOS)


def split_revision(value: str) -> tuple[str, str | None]:
    """`repo@revision` -> (repo, revision); no revision -> None (the repo's default branch)."""
    name, _, revision = value.partition("@")
    return name, revision or None


def snapshot(ref: HubRef, what: str) -> tuple[Path, str]:
    """The snapshot folder holding `ref`'s files (downloaded if needed) and its commit."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        folder = Path(snapshot_download(ref.repo_id, revision=ref.revision, allow_patterns=ref.patterns()))
    except LocalEntryNotFoundError:
        raise HousevoxError(f"{what}: not in the Hugging Face cache and the hub cannot be reached (offline or no "
                            f"network); fetch it once with `{ref.fetch_command()}`") from None
    except RevisionNotFoundError:
        raise HousevoxError(f"{what}: the hub has no revision {ref.revision!r} of {ref.repo_id}") from None
    except RepositoryNotFoundError:
        raise HousevoxError(f"{what}: no repo {ref.repo_id} on the hub (or it needs a token: `hf auth login`)") from None
    except (HfHubHTTPError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HousevoxError(f"{what}: download from the hub failed ({first}); rerun to resume, or fetch it with "
                            f"`{ref.fetch_command()}`") from None
    return folder, folder.name


def _weight_names(folder: Path) -> list[str]:
    """The DiT's weight files: the shards its index lists, or the single file."""
    index = folder / "model.safetensors.index.json"
    if not index.is_file():
        return ["model.safetensors"]
    weight_map = read_json_object(index).get("weight_map")
    return sorted(set(weight_map.values())) if isinstance(weight_map, dict) else [index.name]


def _check_complete(folder: Path, required: list[str], ref: HubRef, what: str) -> None:
    missing = [name for name in required if not (folder / name).is_file()]
    if missing:
        raise HousevoxError(f"{what}: {missing[0]} is missing from the Hugging Face cache ({folder}); fetch it with "
                            f"`{ref.fetch_command()}`")


def config_file(value: str) -> Path | None:
    """A model name's DiT config.json alone (a few KB, fetched on first use): what planning a run needs, without
    the weights. None when neither the cache nor the hub has it."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    ref = parse_model_name(value)
    try:
        return Path(hf_hub_download(ref.repo_id, "config.json", subfolder=ref.subfolder or None, revision=ref.revision))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError):
        return None


@functools.cache
def resolve_checkpoint(value: str) -> HubCheckpoint:
    """Resolve (fetching on first use) a DiT model name and the shared VAE and text encoder it runs with."""
    ref = parse_model_name(value)
    if ref is None:
        raise HousevoxError(f"{value}: not an ACE-Step v1.5 model name (one of {model_names()}, optionally "
                            f"ACE-Step/<name> and @revision)")
    short = ref.subfolder or ref.repo_id.split("/")[1]
    root, commit = snapshot(ref, f"model {short}")
    dit_dir = root / ref.subfolder if ref.subfolder else root
    _check_complete(dit_dir, [*REQUIRED["DiT"], *_weight_names(dit_dir)], ref, f"model {short}")
    # The shared parts follow a pinned revision only when the DiT lives in the same repo.
    shared = HubRef(SHARED_REPO, (VAE_DIRNAME, TEXT_ENCODER_DIRNAME), ref.revision if ref.repo_id == SHARED_REPO else None)
    shared_root, shared_commit = snapshot(shared, f"{SHARED_REPO} ({VAE_DIRNAME}/, {TEXT_ENCODER_DIRNAME}/)")
    for part in shared.subfolders:
        part_ref = HubRef(SHARED_REPO, (part,), shared.revision)
        _check_complete(shared_root / part, list(REQUIRED[part]), part_ref, f"{SHARED_REPO} {part}/")
    dit_source = f"{ref.repo_id}@{commit}" + (f":{ref.subfolder}/" if ref.subfolder else "")
    return HubCheckpoint(
        name=short, dit_dir=dit_dir, vae_dir=shared_root / VAE_DIRNAME,
        text_encoder_dir=shared_root / TEXT_ENCODER_DIRNAME,
        sources={"dit": dit_source, VAE_DIRNAME: f"{SHARED_REPO}@{shared_commit}:{VAE_DIRNAME}/",
                 "text_encoder": f"{SHARED_REPO}@{shared_commit}:{TEXT_ENCODER_DIRNAME}/"},
    )
