from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query, Response

from app.deps import AdminDep, ReadSessionDep, SessionDep
from app.errors import WebhookNotFound
from app.webhooks import service
from app.webhooks.schemas import WebhookCreate, WebhookCreated, WebhookDeliveryRead, WebhookRead

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


@router.post("", status_code=201, summary="Register a webhook", response_model=WebhookCreated)
def create_webhook(
    body: WebhookCreate, actor: AdminDep, session: SessionDep, response: Response
) -> WebhookCreated:
    """The URL receives a signed POST for every state change of the organisation's deletion
    requests (``deletion_request.queued``, ``.running``, ``.succeeded``, ``.rejected``,
    ``.failed``, ``.canceled``). The secret that signs them is shown in this answer only."""
    hook = service.create(session, actor, body.url)
    response.headers["Location"] = f"/v1/webhooks/{hook.id}"
    return WebhookCreated(**WebhookRead.model_validate(hook).model_dump(), secret=hook.secret)


@router.get("", summary="List webhooks", response_model=list[WebhookRead])
def list_webhooks(actor: AdminDep, session: ReadSessionDep) -> list[WebhookRead]:
    """Every webhook of the organisation, disabled ones included (never their secrets)."""
    return [WebhookRead.model_validate(h) for h in service.list_webhooks(session, actor.org_id)]


@router.get(
    "/{webhook_id}",
    summary="Get a webhook",
    response_model=WebhookRead,
    responses={404: WebhookNotFound.openapi()},
)
def get_webhook(webhook_id: str, actor: AdminDep, session: ReadSessionDep) -> WebhookRead:
    """The webhook's URL and state (never its secret)."""
    return WebhookRead.model_validate(service.get(session, actor.org_id, webhook_id))


@router.delete(
    "/{webhook_id}",
    status_code=204,
    summary="Disable a webhook",
    responses={404: WebhookNotFound.openapi()},
)
def disable_webhook(webhook_id: str, actor: AdminDep, session: SessionDep) -> Response:
    """No further events are sent to it; deliveries still pending end as failed. The row stays
    (with ``disabled_at``) for its delivery history."""
    service.disable(session, actor, webhook_id)
    return Response(status_code=204)


@router.get(
    "/{webhook_id}/deliveries",
    summary="A webhook's deliveries",
    response_model=list[WebhookDeliveryRead],
    responses={404: WebhookNotFound.openapi()},
)
def list_deliveries(
    webhook_id: str,
    actor: AdminDep,
    session: ReadSessionDep,
    status: Literal["pending", "delivered", "failed"] | None = Query(None),
    limit: int = Query(100, ge=1, le=1000),
) -> list[WebhookDeliveryRead]:
    """The most recent deliveries first: status, attempts, the last HTTP status or error."""
    rows = service.deliveries(session, actor.org_id, webhook_id, status, limit)
    return [WebhookDeliveryRead.model_validate(d) for d in rows]
