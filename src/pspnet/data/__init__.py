"""Datasets, paired transforms, preprocessing and dataset descriptions."""

from pspnet.data.info import ADE20K, CITYSCAPES, VOC2012, DatasetInfo, get_dataset_info
from pspnet.data.preprocess import CAFFE_PREPROCESS, PYTORCH_PREPROCESS, Preprocess

__all__ = [
    "ADE20K",
    "CAFFE_PREPROCESS",
    "CITYSCAPES",
    "PYTORCH_PREPROCESS",
    "VOC2012",
    "DatasetInfo",
    "Preprocess",
    "get_dataset_info",
]
