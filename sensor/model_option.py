"""The ``--model`` option of ``replay`` (and of a cluster task): the anomaly detector to run, if any (issue 6).

Apart from ``sensor/cli_model.py`` (train, evaluate) so that a replay without a model does not import the model
code (0.07 s of its start); the model code is imported when a model is asked for.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import click

from sensor.cli_fail import fail
from sensor.config import Config


def load_model(path: str) -> Any:
    from detectors.anomaly import Model, ModelError

    try:
        return Model.load(path)
    except ModelError as e:
        fail(str(e))


def model_detectors(config: Config, path: str | None, learn_to: str | None = None) -> list[Any]:
    """The anomaly detector for replay: from ``--model`` or the config's model.path, or nothing."""
    path = path or config.raw.get("model", {}).get("path")
    if not path:
        if learn_to:
            fail("--model-learn needs --model")
        return []
    from detectors.anomaly import AnomalyDetector, LearnOptions

    return [AnomalyDetector(load_model(path), LearnOptions() if learn_to else None)]


def save_learned(detectors: Iterable[Any], learn_to: str | None) -> None:
    """After a replay with slow learning: write the updated model and say what it learned."""
    if not learn_to:
        return
    from detectors.anomaly import AnomalyDetector

    for d in detectors:
        if isinstance(d, AnomalyDetector) and d.learner is not None:
            d.model.save(learn_to)
            click.echo(f"model: learned {len(d.learner.learned)} item(s), {len(d.learner.candidates)} on probation; "
                       f"saved to {learn_to}", err=True)  # fmt: skip
