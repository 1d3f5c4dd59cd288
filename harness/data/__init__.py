"""Datasets: cards, one-time FFCV conversion, long-tailed subsets and the training loaders.

    card = load_card("cifar10")                     # datasets/cifar10.yaml
    convert(card, "~/downloads", "data")            # tools/prepare_data.py: source -> .beton once
    data = build_data(cfg, device, rank, world)     # what the trainer reads (harness.data.build)

The modules, in the order data flows: cards, readers (source layouts), conversion (-> .beton,
manifest), beton (the file format), synthetic (the procedural demo dataset), imbalance (profiles
-> indices), generated (tail images from tools/generate_tail.py), loaders / ffcv_loader /
sampling (batches), augment (batched augmentations), build (all of it for one run).
"""
from harness.data.augment import AUGMENTATIONS, Batch, build_augmentation
from harness.data.beton import Beton, write_beton
from harness.data.build import Data, build_data
from harness.data.cards import Card, load_card
from harness.data.conversion import convert, data_dir, prepare
from harness.data.imbalance import PROFILES
from harness.data.loaders import MemoryLoader

__all__ = ["AUGMENTATIONS", "Batch", "Beton", "Card", "Data", "MemoryLoader", "PROFILES", "build_augmentation",
           "build_data", "convert", "data_dir", "load_card", "prepare", "write_beton"]
