"""Model adapters, architectures and checkpoint I/O.

Heavy libraries (transformers, diffusers) are imported only when a function that needs them runs, so importing
robustdistill.models stays fast.
"""

from robustdistill.models import dynamic as dynamic  # ProARD; imports models.subnet, which registers "proard-subnet"
from robustdistill.models.architectures import ARCHITECTURES, build_network, infer_arch_params
from robustdistill.models.builders import build_tiny_causal_lm, build_tiny_class_unet, build_tiny_text_unet
from robustdistill.models.checkpoint import checkpoint_sha256, load_model, save_checkpoint
from robustdistill.models.classifier import Classifier, HFImageClassifier
from robustdistill.models.diffusion import DiffusionModel
from robustdistill.models.language import LanguageModel

__all__ = [
    "ARCHITECTURES",
    "Classifier",
    "DiffusionModel",
    "HFImageClassifier",
    "LanguageModel",
    "build_network",
    "build_tiny_causal_lm",
    "build_tiny_class_unet",
    "build_tiny_text_unet",
    "checkpoint_sha256",
    "infer_arch_params",
    "load_model",
    "save_checkpoint",
]
