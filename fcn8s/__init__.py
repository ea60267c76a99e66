"""FCN-8s semantic segmentation: data-parallel MindSpore training for Ascend clusters and CPU."""

__version__ = "0.1.0"
