"""Dataset cards (datasets/<name>.yaml): what the harness knows about a dataset before reading it."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from harness.registry import ConfigError

CARDS_DIR = Path(__file__).resolve().parents[2] / "datasets"


@dataclass
class Card:
    """Classes, size, normalisation, the source layouts it can be read from and how it is stored."""
    name: str
    num_classes: int
    classes: list
    resolution: int
    mean: list
    std: list
    source: dict = field(default_factory=dict)
    """Generated datasets only: how the harness makes it (kind: synthetic, ...)."""
    n_max: int | None = None
    """Training images per class in the full (balanced) set, for reference."""
    layouts: list = field(default_factory=list)
    """Source layouts on disk, tried in order (see harness.data.readers)."""
    storage: str = "raw"
    """How images go into the .beton: raw pixels (small images) or jpeg."""
    jpeg_quality: int = 90
    """JPEG quality when storage is jpeg."""
    path: str = ""


def load_card(name_or_path: str | Path) -> Card:
    """A card by name (datasets/<name>.yaml) or by path; ConfigError naming what is wrong."""
    path = Path(name_or_path)
    if not path.suffix:
        path = CARDS_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in CARDS_DIR.glob("*.yaml")))
        raise ConfigError(f"unknown dataset '{name_or_path}' (no card {path}); known: {known}")
    raw = yaml.safe_load(path.read_text())
    names = {f.name for f in fields(Card)} - {"path"}
    if not isinstance(raw, dict) or set(raw) - names:
        extra = sorted(set(raw) - names) if isinstance(raw, dict) else ["(not a mapping)"]
        raise ConfigError(f"{path}: bad dataset card (unknown key {extra[0]}; known: {', '.join(sorted(names))})")
    try:
        card = Card(**raw, path=str(path))
    except TypeError as e:
        raise ConfigError(f"{path}: bad dataset card ({e})") from None
    if len(card.classes) != card.num_classes:
        raise ConfigError(f"{path}: lists {len(card.classes)} classes but num_classes is {card.num_classes}")
    if card.storage not in ("raw", "jpeg"):
        raise ConfigError(f"{path}: storage must be raw or jpeg, got {card.storage!r}")
    return card
