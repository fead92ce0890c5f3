"""The fixed takes an eval renders: training prompts plus a few held-out ones, each with its own seed.

A prompt carries a take's caption fields, read from the cache index's rows (`keyscale` there is `key`).
Training prompts test the style on what the LoRA saw; held-out prompts (captions of the
validation tracks) test it on what it did not. The same takes are rendered for every epoch
and for the base, so the scores differ by the weights alone.
"""

from dataclasses import asdict, dataclass, fields
from pathlib import Path

from housevox.errors import HousevoxError
from housevox.generate import Caption
from housevox.jsonfile import jsonl_rows

DEFAULT_TAKES = 8
DEFAULT_SEED = 42
INDEX_NAMES = {"key": "keyscale"}  # a Caption field under another name in the cache index (and eval.json)
PROMPT_FIELDS = tuple(INDEX_NAMES.get(f.name, f.name) for f in fields(Caption))  # as the index rows name them


@dataclass
class Prompt(Caption):
    """A take's caption fields and where they came from; the sampler's come from the eval's template take."""

    language: str | None = None  # unset: the template's
    origin: str = "train"  # train | held_out | file


@dataclass(frozen=True)
class EvalTake:
    prompt: Prompt
    seed: int

    def record(self) -> dict:
        return {**{INDEX_NAMES.get(k, k): v for k, v in asdict(self.prompt).items()}, "seed": self.seed}


def distinct_prompts(rows: list[dict], origin: str, default_caption: str = "") -> list[Prompt]:
    """One prompt per distinct caption-field tuple, in the rows' order; a row without a caption gets
    `default_caption` (the run's data.default_caption, empty by default), the caption fit trained it on."""
    seen = dict.fromkeys((row.get("caption") or default_caption, *(row.get(f) for f in PROMPT_FIELDS[1:])) for row in rows)
    return [Prompt(*values, origin=origin) for values in seen]


def read_prompts(path: str | Path) -> list[Prompt]:
    """JSONL, one object per line with the manifest's caption fields (`key` or `keyscale`); `caption` is required."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise HousevoxError(f"--prompts {path}: unreadable ({exc})") from None
    prompts = []
    for lineno, row, problem in jsonl_rows(lines):
        if problem:
            raise HousevoxError(f"--prompts {path}:{lineno}: {problem}")
        if not isinstance(row, dict) or not isinstance(row.get("caption"), str) or not row["caption"].strip():
            raise HousevoxError(f"--prompts {path}:{lineno}: needs an object with a non-empty \"caption\"")
        if "key" in row:
            row.setdefault("keyscale", row.pop("key"))
        prompts.append(Prompt(*(row.get(f) for f in PROMPT_FIELDS), origin="file"))
    if not prompts:
        raise HousevoxError(f"--prompts {path}: holds no prompt")
    return prompts


def plan_takes(train: list[Prompt], held_out: list[Prompt], n: int, seed: int, held_out_share: float = 0.25) -> list[EvalTake]:
    """`n` takes cycling over the prompts, a quarter (at least one, when there are any) from held-out prompts.

    Take i gets seed `seed + i`, so a longer eval extends a shorter one instead of redrawing it.
    """
    if n < 1:
        raise HousevoxError(f"--takes {n}: must be at least 1")
    if not train and not held_out:
        raise HousevoxError("no prompts: no segments to take captions from; pass --prompts FILE")
    n_held = min(n, max(1, round(held_out_share * n))) if held_out else 0
    n_held = n_held if train else n
    order = [train[i % len(train)] for i in range(n - n_held)] + [held_out[i % len(held_out)] for i in range(n_held)]
    return [EvalTake(prompt, seed + i) for i, prompt in enumerate(order)]
