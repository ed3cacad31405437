"""pspnet: the Pyramid Scene Parsing Network, faithful to the paper and the authors' code."""

from pspnet.data.info import DatasetInfo, get_dataset_info
from pspnet.data.preprocess import Preprocess
from pspnet.io.checkpoint import from_pretrained, load_model, save_model, save_pretrained
from pspnet.models import PSPNet, PSPNetConfig, create_model, get_preset, list_models
from pspnet.prediction import Prediction, predict

__version__ = "0.1.0"

__all__ = [
    "DatasetInfo",
    "PSPNet",
    "PSPNetConfig",
    "Prediction",
    "Preprocess",
    "__version__",
    "create_model",
    "from_pretrained",
    "get_dataset_info",
    "get_preset",
    "list_models",
    "load_model",
    "predict",
    "save_model",
    "save_pretrained",
]
