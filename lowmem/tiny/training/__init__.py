"""Training the tiny SpatialEdit on rendered scenes (`lowmem train-tiny`)."""

from lowmem.tiny.training.tiny_model import TRAINED_DIT_CONFIG, TrainingSettings, train_tiny_model

__all__ = ["TRAINED_DIT_CONFIG", "TrainingSettings", "train_tiny_model"]
