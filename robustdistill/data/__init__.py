"""Image datasets for classifiers (built-in digits, a CIFAR-10 folder, an image folder, HF datasets on disk) and
instruction data for language models (Alpaca / ShareGPT JSONL, HF datasets on disk, a seeded offline generator).

    from robustdistill.data import load_split
    train = load_split({"kind": "digits"}, "train")     # ImageSplit: x in [0, 1], (N, C, H, W)
    for x, y in train.loader(batch_size=64, shuffle=True, seed=0): ...

    from robustdistill.data import generate_instructions, split_pool
    pool = generate_instructions(600, seed=0)            # InstructionDataset of 11 task families
    members, nonmembers = split_pool(pool, 0.5, seed=0)  # one pool, a random split (membership inference)
"""

from robustdistill.data.instruction_tasks import REFUSAL_PREFIXES, generate_instructions
from robustdistill.data.instructions import (
    InstructionDataset,
    InstructionExample,
    load_alpaca_jsonl,
    load_instructions_from_disk,
    load_sharegpt_jsonl,
    split_pool,
)
from robustdistill.data.pool import SPLITS
from robustdistill.data.spec import DataSpec, parse_spec, user_error_from_validation
from robustdistill.data.split import ImageSplit, clear_cache, load_split, load_splits

__all__ = [
    "REFUSAL_PREFIXES",
    "SPLITS",
    "DataSpec",
    "ImageSplit",
    "InstructionDataset",
    "InstructionExample",
    "clear_cache",
    "generate_instructions",
    "load_alpaca_jsonl",
    "load_instructions_from_disk",
    "load_sharegpt_jsonl",
    "load_split",
    "load_splits",
    "parse_spec",
    "split_pool",
    "user_error_from_validation",
]
