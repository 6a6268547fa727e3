"""Shared test set-up: offline Hugging Face, throwaway caches, and real tiny models trained once per session."""

from __future__ import annotations

import os
import tempfile

# Set before anything imports huggingface_hub or matplotlib: nothing may be downloaded, nothing written to ~.
_CACHE = tempfile.mkdtemp(prefix="robustdistill-test-cache-")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HOME"] = os.path.join(_CACHE, "hf")
os.environ["ROBUSTDISTILL_CACHE"] = os.path.join(_CACHE, "robustdistill")  # LiRA shadow models
os.environ["MPLCONFIGDIR"] = os.path.join(_CACHE, "mpl")
os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

# The test models are tiny: one thread is as fast as two, and immune to oversubscription on a busy machine.
torch.set_num_threads(1)
