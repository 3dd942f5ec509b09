"""Exception types of the export stage; the CLI turns each into one `error: ...` line and a non-zero exit."""

from __future__ import annotations


class ExportError(Exception):
    """Export could not produce a servable, verified model version; nothing was written to the repository."""


class RunInputError(ExportError):
    """The run directory is missing, incomplete (no `model.keras`/`run.json`) or its model file is corrupt."""


class ConversionError(ExportError):
    """tf2onnx could not convert the model; the message names the Keras layer and the TensorFlow op."""


class ParityError(ExportError):
    """ONNX Runtime does not compute what Keras computes within the thresholds; `report_path` holds why."""

    def __init__(self, message: str, report_path: str | None = None) -> None:
        super().__init__(message)
        self.report_path = report_path


class VariantRejectedError(ParityError):
    """An fp16/int8 variant lost more test accuracy than the configured bound allows."""


class RepositoryWriteError(ExportError):
    """The repository could not be written (not writable, disk full, version exists without --force)."""


class VersionExistsError(RepositoryWriteError):
    """The requested version already exists and `force` was not given."""
