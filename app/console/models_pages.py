"""Models in the console: each model's versions as a lineage tree, with downloads."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from app.console import views
from app.console.deps import DownloadDep, SignedInDep
from app.console.templating import render
from app.deps import ReadSessionDep, SessionDep
from app.models import service as models
from app.models.router import VersionNumber
from app.responses import StoredFileResponse
from app.storage import served_file

router = APIRouter()


@router.get("/models")
def models_page(request: Request, session: ReadSessionDep, user: SignedInDep) -> Response:
    org = user.actor.org_id
    rows = [
        (m, len(models.list_versions(session, org, m.id))) for m in models.list_models(session, org)
    ]
    return render(request, "models.html", user, rows=rows)


@router.get("/models/{model_ref}")
def model_page(
    model_ref: str, request: Request, session: ReadSessionDep, user: SignedInDep
) -> Response:
    org = user.actor.org_id
    model = models.get_model(session, org, model_ref)
    versions = [models.version_read(v) for v in models.list_versions(session, org, model.id)]
    return render(
        request, "model.html", user, model=model, tree=views.lineage(versions), count=len(versions)
    )


@router.get("/models/{model_ref}/versions/{number}/checkpoint")
def download(
    model_ref: str,
    number: VersionNumber,
    session: SessionDep,
    user: DownloadDep,
    override_reason: Annotated[str | None, Query(min_length=1, max_length=1000)] = None,
) -> Response:
    """As GET /v1/models/{ref}/versions/{n}/checkpoint: download scope, a superseded version
    only for an admin with a reason, every download audited."""
    actor = user.actor
    version = models.downloadable_version(session, actor, model_ref, number, override_reason)
    models.record_download(session, actor, version, override_reason)
    path = served_file(version.storage_key, f"version {version.number}")
    headers = {"ETag": f'"{version.sha256}"', "X-Checksum-SHA256": version.sha256}
    # The model's name (safe in a file name by its registration pattern), not its id.
    model = models.get_model(session, actor.org_id, version.model_id)
    filename = f"{model.name}-v{version.number}.safetensors"
    return StoredFileResponse(
        path, media_type="application/octet-stream", filename=filename, headers=headers
    )
