"""Every error serving reports, in one tree whose root carries the status a caller gets.

A transport never decides a status code itself: it asks `status_of(error)` and translates the `Status`
into its own terms (a gRPC code, an HTTP status). Anything outside the tree is a bug and reaches the
caller as INTERNAL with a fixed message (the details go to the server log, never to the client).
The batch job and the command line catch `ServingError` to report any failure as one line.
"""

from __future__ import annotations

import enum
from pathlib import Path


class Status(enum.Enum):
    """What a caller is told, whatever the transport: the gRPC status code and its HTTP counterpart."""

    CANCELLED = (1, 499)
    UNKNOWN = (2, 500)
    INVALID_ARGUMENT = (3, 400)
    DEADLINE_EXCEEDED = (4, 504)
    NOT_FOUND = (5, 404)
    ALREADY_EXISTS = (6, 409)
    PERMISSION_DENIED = (7, 403)
    RESOURCE_EXHAUSTED = (8, 429)
    FAILED_PRECONDITION = (9, 400)
    ABORTED = (10, 409)
    OUT_OF_RANGE = (11, 400)
    UNIMPLEMENTED = (12, 501)
    INTERNAL = (13, 500)
    UNAVAILABLE = (14, 503)
    DATA_LOSS = (15, 500)
    UNAUTHENTICATED = (16, 401)

    def __init__(self, grpc_code: int, http_status: int) -> None:
        self.grpc_code = grpc_code
        self.http_status = http_status


INTERNAL_MESSAGE = "internal error; the server log has the details"
# How much of a name a client sent is echoed back in a message (a 1 MB model name must not come back).
ECHO_CHARS = 64


def shown(name: str, limit: int = ECHO_CHARS) -> str:
    """A name a client sent, quoted for a message: cut to `limit` characters, saying how long it was."""
    if len(name) <= limit:
        return repr(name)
    return f"{name[:limit]!r}… ({len(name):,} characters)"


def without_root(text: str, root: Path) -> str:
    """A message about files under `root` (a model repository) with the paths relative to it: what a client
    may read, where the server's log keeps the absolute paths."""
    for prefix in {str(root.resolve()), str(root)}:
        text = text.replace(prefix.rstrip("/") + "/", "")
    return text


class ServingError(Exception):
    """Root of every serving error; `status` says what the caller is told, the message names the culprit."""

    status: Status = Status.INTERNAL


def status_of(error: BaseException) -> tuple[Status, str]:
    """The status and message a caller gets for an error: ours carry both; a cancelled call is CANCELLED;
    anything else is INTERNAL with a fixed message."""
    if isinstance(error, ServingError):
        return error.status, str(error)
    import asyncio  # here, not at the top: the health probe imports this module and must start fast

    if isinstance(error, asyncio.CancelledError):
        return Status.CANCELLED, "the call was cancelled"
    return Status.INTERNAL, INTERNAL_MESSAGE


# -- INVALID_ARGUMENT -----------------------------------------------------------------------------------


class InvalidRequestError(ServingError):
    """A request argument or image is invalid; `index` names the offending image when there is one."""

    status = Status.INVALID_ARGUMENT

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


class ImageDecodeError(InvalidRequestError):
    """The bytes are not an image Pillow can decode (corrupt, truncated, empty or another format)."""


class ImageTooLargeError(ImageDecodeError):
    """The image's header declares more pixels than the configured limit; its pixels were never decoded."""


class LayerHasNoWeightsError(InvalidRequestError):
    """The layer exists but holds no kernel (pooling, flatten, dropout)."""


class SettingsError(InvalidRequestError):
    """A flag or environment variable has an invalid value; the message names it."""


# -- NOT_FOUND ------------------------------------------------------------------------------------------


class NotFoundError(ServingError):
    """Something named in the request does not exist; the message lists what does."""

    status = Status.NOT_FOUND


class ModelNotFoundError(NotFoundError):
    """No such model or version."""


class LayerNotFoundError(NotFoundError):
    """No layer of that name (activations or weights); the message lists the model's layers."""


# -- FAILED_PRECONDITION --------------------------------------------------------------------------------


class FailedPreconditionError(ServingError):
    """The request is valid but the model or the installation cannot serve it; the message says why."""

    status = Status.FAILED_PRECONDITION


class GradCamUnavailableError(FailedPreconditionError):
    """The model version has no gradient graph (MLPs have no convolution)."""


class WeightsUnavailableError(FailedPreconditionError):
    """The model version was exported without its weights file (GetFilters needs a re-export)."""


class DeviceUnavailableError(FailedPreconditionError):
    """The requested device cannot be used (e.g. `cuda` without a GPU build or a GPU)."""


class MissingExtraError(FailedPreconditionError):
    """An optional dependency (Ray, pyarrow, matplotlib, tqdm) is not installed; says which extra has it."""


# -- UNAVAILABLE ----------------------------------------------------------------------------------------


class UnavailableError(ServingError):
    """The server or model cannot take the call now; retrying later (or elsewhere) may succeed."""

    status = Status.UNAVAILABLE


class ModelUnavailableError(UnavailableError):
    """The model or version exists in the repository but cannot serve (failed to load); says why."""


class ShuttingDownError(UnavailableError):
    """The server is shutting down (or the model is being unloaded) and takes no new work."""


# -- RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED --------------------------------------------------------------


class QueueFullError(ServingError):
    """The model's batch queue holds its maximum number of waiting images."""

    status = Status.RESOURCE_EXHAUSTED


class DeadlineExpiredError(ServingError):
    """The caller's deadline passed while the request waited; it was dropped, not computed."""

    status = Status.DEADLINE_EXCEEDED


# -- INTERNAL (the server's own files or runtime are at fault) ------------------------------------------


class RepositoryError(ServingError):
    """The repository, a model folder or one of its files is missing or invalid."""

    status = Status.INTERNAL


class ModelLoadError(ServingError):
    """ONNX Runtime could not load a model file; the message names the file."""

    status = Status.INTERNAL


class WeightsReadError(ServingError):
    """The weights file disagrees with the config (a layer missing, a shape that does not match)."""

    status = Status.INTERNAL


# -- the batch job ----------------------------------------------------------------------------------------


class JobError(FailedPreconditionError):
    """The batch job cannot start (bad arguments, a model the server does not serve) or cannot go on."""


class OutputError(JobError):
    """The output file has an unknown extension, or an existing output cannot be resumed."""


class FolderNotFoundError(NotFoundError):
    """The folder to classify does not exist or is not a directory."""


class ServerUnavailableError(UnavailableError):
    """The server did not answer (UNAVAILABLE) even after retrying with backoff."""
