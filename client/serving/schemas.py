"""Request and response bodies: the published contract (OpenAPI) of the serving API.

Identifiers are bounded strings without control characters (they end up in the CSV event log and on the staff
page); list lengths and ``n`` are bounded so no request can ask for unbounded work.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StringConstraints

from client.serving.config import MAX_EVENTS_PER_REQUEST, MAX_ID_LENGTH, MAX_N, MAX_SESSION_ITEMS

ID_PATTERN = r"^[^\x00-\x1f\x7f]+$"
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN)]
EventName = Literal["view", "cart", "purchase"]
Strategy = Literal["model", "popularity"]


def _json_integer(value: object) -> object:
    """JSON Schema's integer: ``3`` and ``3.0`` yes; ``false``, ``"3"`` no (pydantic's lax mode takes them,
    its strict mode refuses ``3.0``; the published schema is the contract, so match it exactly)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a JSON integer")
    return value


JsonInt = Annotated[int, BeforeValidator(_json_integer)]
# Bounds inside the Annotated and before the validator: otherwise pydantic publishes them as non-standard
# "ge"/"le" keys that schema readers ignore.
UnixSeconds = Annotated[int, Field(ge=0, le=10**11), BeforeValidator(_json_integer)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not silently ignored


class SessionRequest(_Request):
    items: list[Identifier] = Field(
        default_factory=list,
        max_length=MAX_SESSION_ITEMS,
        description="the session's recent item ids, oldest first (most recent last)",
    )
    n: JsonInt = Field(10, ge=1, le=MAX_N, description="how many items to return")
    exclude_seen: StrictBool = Field(True, description="leave out the session's own items")


class Event(_Request):
    customer_id: Identifier
    item_id: Identifier
    event: EventName = "view"
    timestamp: UnixSeconds | None = Field(None, description="unix seconds; the server's clock when omitted")


class EventBatch(_Request):
    events: list[Event] = Field(min_length=1, max_length=MAX_EVENTS_PER_REQUEST)


class RecommendedItem(BaseModel):
    item_id: str
    score: float = Field(description="model logit, or the item's count in this store for popularity")
    title: str | None = None


class Recommendations(BaseModel):
    strategy: Strategy = Field(
        description="'model', or 'popularity' for a customer/session with no known item"
    )
    model_version: str | None
    customer_id: str | None = None
    history_length: int = Field(description="known items the recommendation was based on")
    items: list[RecommendedItem]
    unknown_items: list[str] = Field(default_factory=list, description="ids not in the catalog (ignored)")


class EventsRecorded(BaseModel):
    recorded: int = Field(description="events appended durably to the store's event log")
    applied: int = Field(description="events that updated a customer's in-memory history")
    unknown_items: list[str] = Field(default_factory=list, description="ids not in the catalog (logged only)")


class HistoryItem(BaseModel):
    item_id: str
    title: str | None
    event: str
    timestamp: int


class CustomerHistory(BaseModel):
    customer_id: str
    known: bool
    items: list[HistoryItem] = Field(description="most recent first")
    total_seen: int


class RefusalInfo(BaseModel):
    version: str
    reason: str
    time: float


class ModelInfo(BaseModel):
    version: str
    kind: str
    origin: str
    round: int | None
    created: float
    arrived: float | None = Field(description="when the version's directory appeared in the store (mtime)")
    loaded_at: float
    catalog_hash: str
    n_items: int
    scoring: str = Field(description="how the item matrix is scored (results are exact float32 either way)")


class ModelStatus(BaseModel):
    serving: ModelInfo | None
    pointer: str | None = Field(description="the version models/CURRENT names")
    last_refusal: RefusalInfo | None
    swaps: int


class PrivacySummary(BaseModel):
    available: bool
    message: str
    epsilon: float | None = None
    epsilon_budget: float | None = None
    delta: float | None = None
    rounds: int | None = None
    unit: str | None = None
    accountant: str | None = None


class StoreStatus(BaseModel):
    model: ModelStatus
    customers: int
    items: int
    privacy: PrivacySummary


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    ready: bool
    reason: str | None = None
    model_version: str | None = None


class ErrorBody(BaseModel):
    detail: str


class ValidationProblem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorBody(BaseModel):
    detail: list[ValidationProblem]
