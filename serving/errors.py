"""The serving core's error types, one per answer a client should get.

The core (registry, batcher, inference) raises these; the gRPC servicer maps each to a status code in
one place (`servicer.status_for`), and the batch job or a test can catch them without any gRPC.
`repository.ModelNotFoundError` (unknown model or version) completes the set.
"""

from __future__ import annotations


class ServingError(Exception):
    """Base of the errors the serving core reports to a caller."""


class InvalidRequestError(ServingError, ValueError):
    """A request argument or image is invalid; `index` names the offending image when there is one."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


class LayerNotFoundError(ServingError, KeyError):
    """No activation layer of that name; the message lists the model's activation layers."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ModelUnavailableError(ServingError):
    """The model or version exists in the repository but cannot serve (failed to load); says why."""


class QueueFullError(ServingError):
    """The model's batch queue holds its maximum number of waiting images."""


class DeadlineExpiredError(ServingError):
    """The caller's deadline passed while the request waited; it was dropped, not computed."""


class ShuttingDownError(ServingError):
    """The server is shutting down and takes no new work."""
