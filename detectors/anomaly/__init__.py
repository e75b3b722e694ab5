"""Learned baseline and anomaly model (issue 6): train on normal captures, score traffic, explain deviations."""

from detectors.anomaly.detector import AnomalyDetector, LearnOptions, Trainer
from detectors.anomaly.model import Model, ModelError

__all__ = ["AnomalyDetector", "LearnOptions", "Model", "ModelError", "Trainer"]
