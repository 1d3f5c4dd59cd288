"""Reading a finished generation folder back as arrays, and packing it into FFCV files."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image

from harness.files import atomic_path, atomic_write_json
from harness.generate.run import collect_manifest
from harness.registry import ConfigError


def load_generated(out_dir: str | Path, require_complete: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, H, W, 3], labels int64 [N]) in canonical (class, index) order.

    Only the items of out_dir/plan.json are read (images left over from a larger earlier
    plan are ignored). With require_complete, a missing planned image is a ConfigError.
    """
    out_dir = Path(out_dir)
    plan_file = out_dir / "plan.json"
    if not plan_file.is_file():
        raise ConfigError(f"{out_dir} has no plan.json; it is not a generator output folder")
    counts = json.loads(plan_file.read_text())["counts"]
    rows = [r for r in collect_manifest(out_dir)
            if r["class_index"] < len(counts) and r["index"] < counts[r["class_index"]]]
    expected = sum(counts)
    if require_complete and len(rows) != expected:
        have = {(r["class_index"], r["index"]) for r in rows}
        first = next((c, i) for c, n in enumerate(counts) for i in range(n) if (c, i) not in have)
        raise ConfigError(f"{out_dir}: {expected - len(rows)} of {expected} planned images are missing "
                          f"(first: class {first[0]} index {first[1]}); rerun the generator, it resumes")
    if not rows:
        return np.zeros((0, 0, 0, 3), np.uint8), np.zeros(0, np.int64)
    images = []
    for r in rows:
        with Image.open(out_dir / r["file"]) as img:
            images.append(np.asarray(img.convert("RGB")))
    shapes = {a.shape for a in images}
    if len(shapes) != 1:
        raise ConfigError(f"{out_dir}: images of different sizes {sorted(shapes)}; regenerate with one out_size")
    labels = np.array([r["class_index"] for r in rows], dtype=np.int64)
    return np.stack(images), labels


def pack(out_dir: str | Path) -> dict:
    """generated.beton, generated_labels.npy and generated.json from a complete folder (after
    write_manifest); their names are harness.data.generated's, which reads them.

    Skipped when generated.json already describes the current manifest.jsonl. Returns generated.json.
    """
    from harness.data.beton import write_beton
    from harness.data.generated import BETON, INFO, LABELS

    out_dir = Path(out_dir)
    digest = hashlib.sha256((out_dir / "manifest.jsonl").read_bytes()).hexdigest()
    info_path = out_dir / INFO
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        if info["manifest_sha256"] == digest and (not info["images"] or (out_dir / BETON).is_file()):
            return info
    plan = json.loads((out_dir / "plan.json").read_text())
    images, labels = load_generated(out_dir)
    if len(labels):
        write_beton(out_dir / BETON, images, labels)
    with atomic_path(out_dir / LABELS) as tmp, open(tmp, "wb") as f:
        np.save(f, labels)
    info = {"class_names": plan["class_names"], "counts": plan["counts"], "images": int(len(labels)),
            "size": list(images.shape[1:3]), "manifest_sha256": digest}
    atomic_write_json(info_path, info)  # last: it marks the pack as done
    return info
