"""Detectors: the rule engine and the learned baseline. They read messages and never import the pipeline."""
