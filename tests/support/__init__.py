"""Helpers the tests share (not tests): the repository root, small grid files, the SLURM cluster
fixture (support.slurm) and the rank worker of the multi-process tests (support.dist_worker)."""
import importlib.util
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def write_grid(folder: Path, card: Path, data_root: Path, name: str = "g", extra: str = "",
               grid: str = "loss.name: [ce]", epochs: int = 2) -> Path:
    """A grid file for a fast CPU run: ResNet-8 on the tiny card."""
    text = textwrap.dedent(f"""\
        name: {name}
        base:
          data: {{dataset: {card}, root: {data_root}, loader: memory, imbalance_factor: 10}}
          model: {{name: resnet8}}
          optim: {{batch_size: 64, lr: 0.05}}
          schedule: {{epochs: {epochs}, warmup_epochs: 0, decay: cosine}}
          log: {{print_every: 0}}
        grid:
          {grid}
        """) + extra
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def prepare_main():
    """tools/prepare_data.py's main(argv), loaded from the file itself."""
    spec = importlib.util.spec_from_file_location("prepare_data", ROOT / "tools" / "prepare_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main
