"""What every serving error type answers a caller, written out here independently of the error tree.

The gRPC code numbers and HTTP statuses are the protocols' own (grpc.StatusCode, RFC 9110); a new error
type fails the tests until it is added here, with the status a caller should get.
"""

from __future__ import annotations

from cnnserve.serving import errors
from cnnserve.serving.observability.tracing import TracingConfigError
from cnnserve.serving.security.client_credentials import ClientSecurityError
from cnnserve.serving.security.gate import (
    ClientBusyError,
    PermissionDeniedError,
    RefusedError,
    UnauthenticatedError,
)
from cnnserve.serving.security.tls import TlsConfigError
from cnnserve.serving.security.tokens import TokenFileError

# gRPC status code name -> (its number, the HTTP status a REST transport answers)
CODES = {
    "CANCELLED": (1, 499),
    "UNKNOWN": (2, 500),
    "INVALID_ARGUMENT": (3, 400),
    "DEADLINE_EXCEEDED": (4, 504),
    "NOT_FOUND": (5, 404),
    "ALREADY_EXISTS": (6, 409),
    "PERMISSION_DENIED": (7, 403),
    "RESOURCE_EXHAUSTED": (8, 429),
    "FAILED_PRECONDITION": (9, 400),
    "ABORTED": (10, 409),
    "OUT_OF_RANGE": (11, 400),
    "UNIMPLEMENTED": (12, 501),
    "INTERNAL": (13, 500),
    "UNAVAILABLE": (14, 503),
    "DATA_LOSS": (15, 500),
    "UNAUTHENTICATED": (16, 401),
}

# error type -> the gRPC status code name its caller gets
EXPECTED = {
    errors.ServingError: "INTERNAL",
    errors.InvalidRequestError: "INVALID_ARGUMENT",
    errors.ImageDecodeError: "INVALID_ARGUMENT",
    errors.ImageTooLargeError: "INVALID_ARGUMENT",
    errors.LayerHasNoWeightsError: "INVALID_ARGUMENT",
    errors.SettingsError: "INVALID_ARGUMENT",
    TracingConfigError: "INVALID_ARGUMENT",
    TlsConfigError: "INVALID_ARGUMENT",
    TokenFileError: "INVALID_ARGUMENT",
    ClientSecurityError: "INVALID_ARGUMENT",
    RefusedError: "INTERNAL",  # the base of the refusals below: never raised itself
    UnauthenticatedError: "UNAUTHENTICATED",
    PermissionDeniedError: "PERMISSION_DENIED",
    ClientBusyError: "RESOURCE_EXHAUSTED",
    errors.NotFoundError: "NOT_FOUND",
    errors.ModelNotFoundError: "NOT_FOUND",
    errors.LayerNotFoundError: "NOT_FOUND",
    errors.FolderNotFoundError: "NOT_FOUND",
    errors.FailedPreconditionError: "FAILED_PRECONDITION",
    errors.GradCamUnavailableError: "FAILED_PRECONDITION",
    errors.WeightsUnavailableError: "FAILED_PRECONDITION",
    errors.DeviceUnavailableError: "FAILED_PRECONDITION",
    errors.MissingExtraError: "FAILED_PRECONDITION",
    errors.JobError: "FAILED_PRECONDITION",
    errors.OutputError: "FAILED_PRECONDITION",
    errors.UnavailableError: "UNAVAILABLE",
    errors.ModelUnavailableError: "UNAVAILABLE",
    errors.ShuttingDownError: "UNAVAILABLE",
    errors.ServerUnavailableError: "UNAVAILABLE",
    errors.QueueFullError: "RESOURCE_EXHAUSTED",
    errors.DeadlineExpiredError: "DEADLINE_EXCEEDED",
    errors.RepositoryError: "INTERNAL",
    errors.ModelLoadError: "INTERNAL",
    errors.WeightsReadError: "INTERNAL",
}


def make(error_type: type[errors.ServingError], message: str) -> errors.ServingError:
    """An instance of any error type of the table (some take more than a message)."""
    if issubclass(error_type, RefusedError):
        return error_type(message, client="test-client")
    return error_type(message)
