"""Domain errors and their RFC 9457 ``application/problem+json`` rendering.

Services raise ``ServiceError`` subclasses; only the handlers here know about HTTP. Each error has a
stable ``code`` that clients can branch on; the ``detail`` text is for people. Every subclass is
defined here, the one catalogue: a code has exactly one status (tests/api/test_errors.py).
"""

from __future__ import annotations

import errno
import logging
import sqlite3
from typing import Any, ClassVar

from botocore.exceptions import BotoCoreError, ClientError
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from sqlalchemy.exc import DataError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"


class ServiceError(Exception):
    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    title: ClassVar[str] = "Bad request"
    headers: ClassVar[dict[str, str]] = {}

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    @classmethod
    def openapi(cls) -> dict[str, Any]:
        return {
            "description": f"{cls.title} (code `{cls.code}`)",
            "content": {PROBLEM_JSON: {"schema": Problem.model_json_schema()}},
        }


class Unauthenticated(ServiceError):
    status, code, title = 401, "unauthenticated", "Authentication required"
    headers = {"WWW-Authenticate": 'Bearer realm="nepenthe"'}


class InvalidApiKey(Unauthenticated):
    code, title = "invalid_api_key", "Invalid API key"
    headers = {"WWW-Authenticate": 'Bearer realm="nepenthe", error="invalid_token"'}


class InsufficientScope(ServiceError):
    status, code, title = 403, "insufficient_scope", "Insufficient scope"


class CsrfTokenInvalid(ServiceError):
    """A console form posted without this session's CSRF token (another site's form, a stale
    page after signing out): nothing was done."""

    status, code, title = 403, "csrf_token_invalid", "Form not accepted"


class NotFound(ServiceError):
    status, code, title = 404, "not_found", "Not found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class ModelVersionNotFound(NotFound):
    code = "model_version_not_found"


class DatasetNotFound(NotFound):
    code = "dataset_not_found"


class DeletionRequestNotFound(NotFound):
    code = "deletion_request_not_found"


class JobNotFound(NotFound):
    code = "job_not_found"


class ArtifactNotFound(NotFound):
    code = "artifact_not_found"


class ApiKeyNotFound(NotFound):
    code = "api_key_not_found"


class WebhookNotFound(NotFound):
    code = "webhook_not_found"


class ReceiptNotIssued(NotFound):
    code = "receipt_not_issued"


class CertificateNotIssued(NotFound):
    code = "certificate_not_issued"


class VersionSuperseded(ServiceError):
    """Downloading a version that still holds data a deletion request removed (an admin may
    override): the version is gone for ordinary use."""

    status, code, title = 410, "version_superseded", "Version superseded"


class Conflict(ServiceError):
    status, code, title = 409, "conflict", "Conflict"


class NameTaken(Conflict):
    code = "name_taken"


class VersionConflict(Conflict):
    code = "version_conflict"


class JobNotCancelable(Conflict):
    code = "job_not_cancelable"


class InputSuperseded(Conflict):
    """A deletion request against a superseded version: submit against the version the
    superseding request produced (``superseded_by_request_id`` names that request)."""

    code, title = "input_superseded", "Input version superseded"


class ContentSuperseded(Conflict):
    """An upload whose weights are those of a superseded version of the organisation (the same
    stored or uploaded file, under any of its models): they still hold data a deletion removed.
    The problem names that version and the request that superseded it."""

    code, title = "content_superseded", "Content superseded"


class ExtensionRefused(Conflict):
    code = "extension_refused"


class Unprocessable(ServiceError):
    status, code, title = 422, "unprocessable", "Unprocessable request"


class TrainingRecordRequired(Unprocessable):
    code = "training_record_required"


class InvalidArchitecture(Unprocessable):
    code = "invalid_architecture"


class InvalidTransform(Unprocessable):
    code = "invalid_transform"


class MethodUnsupportedForModel(Unprocessable):
    code = "method_unsupported_for_model"


class OptionUnsupportedForModel(Unprocessable):
    code = "option_unsupported_for_model"


class InvalidCheckpoint(Unprocessable):
    code = "invalid_checkpoint"  # refined per instance: checkpoint_mismatch, checkpoint_unsafe, ...

    def __init__(self, detail: str, code: str | None = None, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.instance_code = code or self.code


class InvalidDataset(Unprocessable):
    code = "invalid_dataset"

    def __init__(self, detail: str, code: str | None = None, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.instance_code = code or self.code


class UnknownClass(Unprocessable):
    code = "unknown_class"


class IncompatibleDataset(Unprocessable):
    code = "incompatible_dataset"


class UnknownMethod(Unprocessable):
    code = "unknown_method"


class InvalidMethodParams(Unprocessable):
    code = "invalid_method_params"


class BudgetExceeded(Unprocessable):
    code = "budget_exceeded"


class InvalidForgetSet(Unprocessable):
    code = "invalid_forget_set"


class InvalidRetainSet(Unprocessable):
    code = "invalid_retain_set"


class UnknownSample(Unprocessable):
    code = "unknown_sample"


class MethodUnsupportedForForgetSet(Unprocessable):
    code = "method_unsupported_for_forget_set"


class InvalidAcceptance(Unprocessable):
    code = "invalid_acceptance"


class InvalidPageToken(Unprocessable):
    code = "invalid_page_token"


class InvalidTimeBound(Unprocessable):
    code = "invalid_time_bound"


class EmptyUpload(Unprocessable):
    code = "empty_upload"


class WebhookUrlRefused(Unprocessable):
    code = "webhook_url_refused"


class IdempotencyKeyReused(Unprocessable):
    code = "idempotency_key_reused"
    title = "Idempotency key reused with another body"


class JobCostLimitExceeded(Unprocessable):
    """The job's estimated work is over the operator's cap (NEPENTHE_QUOTA_MAX_JOB_SAMPLE_PASSES),
    whatever the request's own budget."""

    code, title = "job_cost_limit_exceeded", "Job too costly"


class StorageQuotaExceeded(ServiceError):
    """The organisation's stored bytes would pass NEPENTHE_QUOTA_STORED_BYTES: nothing was
    stored; waiting does not help, only a higher quota does."""

    status, code, title = 413, "storage_quota_exceeded", "Storage quota exceeded"


class RateLimited(ServiceError):
    """Refused for now: the client may retry after ``retry_after_s`` seconds (the Retry-After
    header carries it too). Nothing was written."""

    status, code, title = 429, "rate_limited", "Too many submissions"

    def __init__(self, detail: str, retry_after_s: int, **extra: Any) -> None:
        super().__init__(detail, retry_after_s=retry_after_s, **extra)
        self.retry_after_s = retry_after_s


class QuotaExceeded(RateLimited):
    code, title = "quota_exceeded", "Quota exceeded"


class CheckpointMissing(ServiceError):
    status, code, title = 500, "checkpoint_missing", "Checkpoint file missing from the store"


class StoreUnavailable(ServiceError):
    """The checkpoint store does not answer or refuses this service (S3 endpoint down, bucket
    gone, credentials revoked): nothing was changed, retry once the operator has fixed it."""

    status, code, title = 503, "store_unavailable", "Checkpoint store unavailable"
    headers = {"Retry-After": "30"}


class StoreConfigurationError(StoreUnavailable):
    """The configured store cannot be used (missing bucket, credentials, endpoint): the same
    answer to clients (503 store_unavailable), a distinct type for the operator's checks."""


class PayloadTooLarge(ServiceError):
    status, code, title = 413, "payload_too_large", "Payload too large"


class UploadInflatesTooFar(ServiceError):
    """An uploaded archive that would inflate past NEPENTHE_MAX_INFLATED_BYTES or
    NEPENTHE_MAX_COMPRESSION_RATIO, or whose members inflate past their declared sizes: refused
    before (or while) inflating, and nothing kept."""

    status, code, title = 413, "upload_inflates_too_far", "Upload inflates too far"


class Problem(BaseModel):
    """An RFC 9457 problem document; ``code`` is the stable machine-readable error."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    instance: str
    code: str
    request_id: str | None = None


def problem_response(
    request: Request, status: int, code: str, title: str, detail: str, **extra: Any
) -> JSONResponse:
    body = {
        "type": f"https://nepenthe.dev/problems/{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": str(request.url.path),
        "code": code,
        **extra,
    }
    request_id = getattr(request.state, "request_id", None)
    if request_id:
        body["request_id"] = request_id
    return JSONResponse(jsonable_encoder(body), status_code=status, media_type=PROBLEM_JSON)


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    code = getattr(exc, "instance_code", exc.code)
    response = problem_response(request, exc.status, code, exc.title, exc.detail, **exc.extra)
    response.headers.update(exc.headers)
    if isinstance(exc, RateLimited):
        response.headers["Retry-After"] = str(exc.retry_after_s)
    return response


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    if any(e["type"] == "json_invalid" for e in errors):
        return problem_response(
            request,
            400,
            "malformed_json",
            "Malformed JSON",
            "the request body is not valid JSON",
            errors=errors,
        )
    summary = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors[:5])
    return problem_response(
        request, 422, "validation_error", "Invalid request", summary, errors=errors
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    codes = {
        400: "malformed_body",
        404: "not_found",
        405: "method_not_allowed",
        413: "payload_too_large",
    }
    code = codes.get(exc.status_code, f"http_{exc.status_code}")
    title = code.replace("_", " ").capitalize()
    return problem_response(request, exc.status_code, code, title, str(exc.detail))


async def _data_error(request: Request, exc: Exception) -> JSONResponse:
    # The database refused a value (out of range, bad characters): input that slipped past
    # validation. It is still the client's value, so a 4xx, and logged so validation can grow.
    log.warning("database refused a value on %s: %s", request.url.path, exc)
    return problem_response(
        request, 422, "invalid_value", "Invalid value", "a value is out of range or malformed"
    )


# SQLite reports a locked or unreadable file and a broken schema alike as OperationalError; only
# the first kind passes with time.
_SQLITE_TRANSIENT = ("locked", "busy", "unable to open", "disk i/o")


def _is_transient(exc: Exception) -> bool:
    orig = getattr(exc, "orig", None)
    if isinstance(orig, sqlite3.OperationalError):
        return any(word in str(orig).lower() for word in _SQLITE_TRANSIENT)
    return True


async def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    # The database is down or restarting (or, on SQLite, locked past the busy timeout): nothing
    # was written, the client may retry. The pool pings connections before use, so the service
    # recovers by itself once the database is back.
    if not _is_transient(exc):  # e.g. a column a migration not yet run would add
        return await _unexpected_error(request, exc)
    log.warning("database unavailable on %s: %s", request.url.path, exc.__class__.__name__)
    response = problem_response(
        request,
        503,
        "database_unavailable",
        "Database unavailable",
        "the database cannot be reached right now; nothing was changed: retry shortly",
    )
    response.headers["Retry-After"] = "5"
    return response


async def _storage_full(request: Request, exc: Exception) -> JSONResponse:
    if not (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)):
        return await _unexpected_error(request, exc)
    log.error("no space left on the server while serving %s: %s", request.url.path, exc)
    return problem_response(
        request,
        507,
        "insufficient_storage",
        "Insufficient storage",
        "the server has no space left to store this; nothing was kept: retry later",
    )


async def _store_error(request: Request, exc: Exception) -> JSONResponse:
    # botocore's errors reaching a route: the S3 store failed mid-request (a missing object is
    # handled by the store itself and never gets here).
    log.warning("checkpoint store failed on %s: %r", request.url.path, exc)
    return await _service_error(request, StoreUnavailable(f"the checkpoint store failed: {exc}"))


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s", request.url.path, exc_info=exc)
    return problem_response(
        request, 500, "internal_error", "Internal error", "an unexpected error occurred"
    )


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(DataError, _data_error)
    for unavailable in (OperationalError, InterfaceError, PoolTimeout):
        app.add_exception_handler(unavailable, database_unavailable)
    app.add_exception_handler(OSError, _storage_full)
    for store_failure in (BotoCoreError, ClientError):
        app.add_exception_handler(store_failure, _store_error)
    app.add_exception_handler(Exception, _unexpected_error)


class RequestNotRetryable(Conflict):
    code = "request_not_retryable"


class RequestNotClosable(Conflict):
    code = "request_not_closable"
