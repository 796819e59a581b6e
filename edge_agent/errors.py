"""The agent's exception tree.

Every error the agent raises on purpose is an ``EdgeAgentError``. Library
errors (onnxruntime, LiteRT, OpenCV, sqlite) are translated into one of these
where they enter the agent, so callers only ever catch this tree. Each class
carries a ``status`` (the HTTP status the gateway will map it to) and a
``code`` (a stable machine-readable name); the CLI maps them to exit codes.
"""

from __future__ import annotations

from typing import Any


class CodedError(Exception):
    """An error with an HTTP ``status`` and a stable ``code``: the one owner of the error body both
    HTTP APIs answer with (``{"error": message, "code": code, "details": {...}}``). The agent's tree
    (``EdgeAgentError``) and the cloud's (``cloud_sync.errors.CloudSyncError``) grow from it."""

    status: int = 500
    code: str = "internal"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        # "error" holds the message, as the Open Inference Protocol's error body does
        out: dict[str, Any] = {"error": self.message, "code": self.code}
        if self.details:
            out["details"] = self.details
        return out


class EdgeAgentError(CodedError):
    """Root of every error the agent raises on purpose."""


class ConfigError(EdgeAgentError):
    """The configuration is invalid; ``problems`` lists every problem found."""

    status = 500
    code = "config_invalid"

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))
        self.problems = problems


class InvalidInput(EdgeAgentError):
    """The caller sent something the model cannot take (shape, dtype, NaN...)."""

    status = 422
    code = "invalid_input"


class ImageDecodeError(InvalidInput):
    """Bytes that are not a decodable image, or an image over the pixel limit."""

    code = "invalid_image"


class ModelNotFound(EdgeAgentError):
    status = 404
    code = "model_not_found"


class VersionNotFound(ModelNotFound):
    code = "version_not_found"


class ModelNotReady(EdgeAgentError):
    status = 503
    code = "model_not_ready"


class PackageError(EdgeAgentError):
    """A model package is malformed: bad manifest, missing file, bad checksum."""

    status = 422
    code = "package_invalid"


class DecodeError(PackageError):
    """A detector's outputs do not have the shape its post-processing settings describe."""

    code = "postprocess_mismatch"


class ImportRejected(PackageError):
    """``models import`` refused a model file; nothing was written. ``flag`` names what to pass."""

    code = "import_rejected"


class IntegrityError(PackageError):
    """A model file does not match the sha256 its manifest records."""

    code = "integrity_failed"


class SelfTestFailed(PackageError):
    """A model loaded but did not reproduce its golden sample."""

    code = "self_test_failed"


class BackendUnavailable(EdgeAgentError):
    """The runtime library a backend needs is missing or broken here."""

    status = 503
    code = "backend_unavailable"


class InferenceError(EdgeAgentError):
    """The runtime failed while running a model on inputs that passed checks."""

    status = 500
    code = "inference_failed"


class ToolsUnavailable(EdgeAgentError):
    """A tool command needs an optional package the device does not install by default."""

    status = 503
    code = "tools_unavailable"


class QualityGateFailed(EdgeAgentError):
    """A derived model (e.g. quantized) disagrees with its source more than allowed; not written."""

    status = 422
    code = "quality_gate_failed"


class NoSpace(EdgeAgentError):
    """The data directory's filesystem has no room for a write (HTTP 507): a state, not a bug."""

    status = 507
    code = "disk_full"
