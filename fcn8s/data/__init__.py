"""Datasets: VOC/SBD readers, MindRecord writing/reading, augmentation, synthetic data."""
