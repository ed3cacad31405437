"""Datasets, paired transforms, preprocessing and dataset descriptions."""

from pspnet.data.datasets import Sample, SegmentationDataset, open_dataset
from pspnet.data.imageio import read_image, read_mask
from pspnet.data.info import ADE20K, CITYSCAPES, VOC2012, DatasetInfo, get_dataset_info
from pspnet.data.loader import build_loader, set_loader_epoch
from pspnet.data.preprocess import CAFFE_PREPROCESS, PYTORCH_PREPROCESS, Preprocess
from pspnet.data.transforms import eval_transforms, train_transforms
from pspnet.data.verify import VerifyReport, verify_dataset

__all__ = [
    "ADE20K",
    "CAFFE_PREPROCESS",
    "CITYSCAPES",
    "PYTORCH_PREPROCESS",
    "VOC2012",
    "DatasetInfo",
    "Preprocess",
    "Sample",
    "SegmentationDataset",
    "VerifyReport",
    "build_loader",
    "eval_transforms",
    "get_dataset_info",
    "open_dataset",
    "read_image",
    "read_mask",
    "set_loader_epoch",
    "train_transforms",
    "verify_dataset",
]
