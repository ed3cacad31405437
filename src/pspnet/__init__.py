"""pspnet: the Pyramid Scene Parsing Network, faithful to the paper and the authors' code."""

from pspnet.data.info import DatasetInfo, get_dataset_info
from pspnet.data.preprocess import Preprocess
from pspnet.models import PSPNet, PSPNetConfig, create_model, get_preset, list_models

__version__ = "0.1.0"

__all__ = [
    "DatasetInfo",
    "PSPNet",
    "PSPNetConfig",
    "Preprocess",
    "__version__",
    "create_model",
    "get_dataset_info",
    "get_preset",
    "list_models",
]
