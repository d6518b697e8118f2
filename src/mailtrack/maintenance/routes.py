"""HTTP: a customer's data on request (`GET …/export`, `DELETE /api/v1/customers/<id>`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Response, status
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from mailtrack.db import utcnow, write_transaction
from mailtrack.maintenance import metrics
from mailtrack.maintenance.gdpr import CustomerExport, Erasure, erase_customer, export_customer
from mailtrack.maintenance.security import TEXT_PATTERN, ErrorOut
from mailtrack.tenants.auth import API_KEY_RESPONSES, ApiTenant, EngineDep

router = APIRouter(prefix="/api/v1", tags=["customers"], responses=API_KEY_RESPONSES)
CustomerId = Annotated[
    str,
    Path(min_length=1, max_length=200, pattern=TEXT_PATTERN, description="The platform's own customer id."),
]
# The framework's operationIds (from the handlers' names) of the operations on one customer.
_CUSTOMER_OPERATIONS = {
    "score": "get_customer_score_api_v1_customers__customer_id__score_get",
    "export": "export_customer_data_api_v1_customers__customer_id__export_get",
    "erase": "erase_customer_data_api_v1_customers__customer_id__delete",
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "the salon has no customer with this id (or it was erased)"}
}


def customer_links(customer_id: str) -> dict[str, Any]:
    """OpenAPI links from an answer naming a customer (a runtime expression) to the operations on them."""
    return {
        name: {"operationId": operation, "parameters": {"customer_id": customer_id}}
        for name, operation in _CUSTOMER_OPERATIONS.items()
    }


def _export(engine: Engine, tenant_id: int, customer_id: str) -> CustomerExport | None:
    with engine.connect() as conn:
        return export_customer(conn, tenant_id=tenant_id, external_id=customer_id, now=utcnow())


def _erase(engine: Engine, tenant_id: int, customer_id: str) -> Erasure | None:
    with write_transaction(engine) as conn:
        return erase_customer(conn, tenant_id=tenant_id, external_id=customer_id)


@router.get("/customers/{customer_id}/export", responses=_NOT_FOUND)
async def export_customer_data(
    customer_id: CustomerId, tenant_id: ApiTenant, engine: EngineDep, response: Response
) -> CustomerExport:
    """Everything held about one customer: identity, flags, messages, events, clicks (GDPR art. 15)."""
    export = await run_in_threadpool(_export, engine, tenant_id, customer_id)
    if export is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such customer")
    metrics.GDPR_REQUESTS.inc("export")
    response.headers["Cache-Control"] = "no-store"  # personal data: no proxy or browser keeps a copy
    return export


@router.delete(
    "/customers/{customer_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=_NOT_FOUND,
)
async def erase_customer_data(customer_id: CustomerId, tenant_id: ApiTenant, engine: EngineDep) -> Response:
    """Erase one customer's personal data; their old links still redirect but record nothing (art. 17)."""
    if await run_in_threadpool(_erase, engine, tenant_id, customer_id) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such customer")
    metrics.GDPR_REQUESTS.inc("erase")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
