from __future__ import annotations

from fastapi import APIRouter, Response

from app.auth import service
from app.auth.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyRead, Identity
from app.deps import ActorDep, AdminDep, ReadSessionDep, SessionDep
from app.errors import ApiKeyNotFound, Conflict

router = APIRouter(prefix="/v1", tags=["keys"])


@router.get("/whoami", summary="The calling key", response_model=Identity)
def whoami(actor: ActorDep, session: ReadSessionDep) -> Identity:
    """The organisation and scopes of the key that signs this request."""
    return service.whoami(session, actor)


@router.post("/keys", status_code=201, summary="Create an API key", response_model=ApiKeyCreated)
def create_key(
    body: ApiKeyCreate, actor: AdminDep, session: SessionDep, response: Response
) -> ApiKeyCreated:
    """A key of the caller's organisation with the given scopes; the token is shown once."""
    key, token = service.create_key(session, actor, body.name, body.scopes)
    response.headers["Location"] = f"/v1/keys/{key.id}"
    return ApiKeyCreated(**ApiKeyRead.model_validate(key).model_dump(), token=token)


@router.get("/keys", summary="List API keys", response_model=list[ApiKeyRead])
def list_keys(actor: AdminDep, session: ReadSessionDep) -> list[ApiKeyRead]:
    """Every key of the caller's organisation, revoked ones included (never their tokens)."""
    return [ApiKeyRead.model_validate(k) for k in service.list_keys(session, actor.org_id)]


@router.post(
    "/keys/{key_id}/revoke",
    summary="Revoke an API key",
    response_model=ApiKeyRead,
    responses={404: ApiKeyNotFound.openapi(), 409: Conflict.openapi()},
)
def revoke_key(key_id: str, actor: AdminDep, session: SessionDep) -> ApiKeyRead:
    """The key stops working at once; the revocation is audited."""
    return ApiKeyRead.model_validate(service.revoke_key(session, actor, key_id))
