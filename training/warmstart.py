"""`--init-from RUN_DIR`: start training from another run's weights (fine-tuning), same architecture only.

The other run is checked in two steps, both before anything is written: its `run.json` must describe the
same zoo model with the same input shape (`check_source`, cheap), and its `model.keras` must hold a weight
of the same shape for every layer (`load_weights_into`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cnnserve.training.errors import InitFromError
from cnnserve.training.rundir import RunDirectoryError, RunInfo, load_run, model_path
from cnnserve.training.zoo import ZooEntry


def check_source(run_dir: str | Path, entry: ZooEntry) -> RunInfo:
    """The other run, if its weights can start `entry`; `InitFromError` names the mismatch otherwise."""
    try:
        source = load_run(run_dir)
    except RunDirectoryError as error:
        raise InitFromError(f"--init-from: {error}") from None
    if source.model != entry.name:
        raise InitFromError(
            f"--init-from {run_dir} is a {source.model} run; {entry.name} can only start from a run of "
            f"the same architecture"
        )
    if tuple(source.input_shape) != tuple(entry.input_shape):
        raise InitFromError(
            f"--init-from {run_dir} was trained on inputs of shape {tuple(source.input_shape)}; "
            f"{entry.name} takes {tuple(entry.input_shape)}"
        )
    return source


def load_weights_into(model: Any, run_dir: str | Path) -> None:
    """Copy the other run's weights into `model`, layer by layer, refusing any shape that differs."""
    import keras

    path = model_path(run_dir)
    try:
        source = keras.models.load_model(path, compile=False)
    except Exception as error:  # a truncated or foreign file: say which
        raise InitFromError(f"--init-from: {path} is not a readable Keras model ({error})") from None
    theirs = {layer.name: layer for layer in source.layers}
    for layer in model.layers:
        other = theirs.get(layer.name)
        if other is None:
            raise InitFromError(f"--init-from: {path} has no layer {layer.name!r}")
        mine_shapes = [tuple(w.shape) for w in layer.get_weights()]
        their_shapes = [tuple(w.shape) for w in other.get_weights()]
        if mine_shapes != their_shapes:
            raise InitFromError(
                f"--init-from: layer {layer.name!r} of {path} has weights {their_shapes}, "
                f"{model.name} needs {mine_shapes}"
            )
    for layer in model.layers:
        layer.set_weights(theirs[layer.name].get_weights())
