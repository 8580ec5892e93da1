"""The outbound APIs of the fake Google Cloud server: Security Command Center v1 findings and Pub/Sub publish.

Served as the real REST clients send them (`google-cloud-securitycenter` `securitycenter_v1`, `google-cloud-pubsub`
`pubsub_v1` GAPIC, `transport="rest"`):

- SCC sources: `POST /v1/organizations/O/sources` (create), `GET /v1/organizations/O/sources/S`.
- SCC findings: `POST /v1/{source}/findings?findingId=ID` (create: the id alphanumeric, 1 to 32 characters; 409
  ALREADY_EXISTS when taken; 404 when the source does not exist), `PATCH /v1/{finding}?updateMask=a,b` (update the
  masked fields, all mutable ones without a mask; creates the finding when absent, as the API does; `category`
  and `resourceName` are immutable after creation: changing them is 400), `POST /v1/{finding}:setState`
  (`state`, `startTime`), `GET /v1/{source}/findings` (`filter` with `field="value"` terms joined by AND,
  `pageSize`, `pageToken`; `sources/-` lists every source of the organization).
  Enums are accepted as names or numbers and answered as names; every write sets `eventTime`/`createTime`.
- Pub/Sub: `PUT /v1/projects/P/topics/T` (create), `POST /v1/projects/P/topics/T:publish` (404 for an unknown
  topic; messages kept with their decoded data, attributes, ids and publish times).
- Pub/Sub subscriptions (the subscriber client's unary calls): `PUT /v1/projects/P/subscriptions/S` (`topic`,
  `ackDeadlineSeconds`, `deadLetterPolicy`), `POST /v1/{subscription}:pull` (`maxMessages`: the messages published
  to the topic since the subscription was made, fanned out to each of its subscriptions, not acknowledged and not
  leased: a message pulled and not acknowledged within its ack deadline is delivered again with a new `ackId`, its
  delivery attempts counted, and said as `deliveryAttempt` when the subscription has a dead-letter policy, as the
  service does), `POST /v1/{subscription}:acknowledge` (`ackIds`; an earlier delivery's ackId does nothing),
  `POST /v1/{subscription}:modifyAckDeadline` (`ackIds`, `ackDeadlineSeconds` 0 to 600: 0 is a nack, the message
  can be pulled again at once). Ack deadlines run on `PubSubFake.clock` (monotonic unless a test sets one).

State lives in `fake.ext["scc"]` (`SccFake`) and `fake.ext["pubsub"]` (`PubSubFake`); writes are counted per method.
"""

from __future__ import annotations

import base64
import copy
import itertools
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tests.fakes.gcp import EXTRA_ROUTES, ApiError, RecordedRequest

if TYPE_CHECKING:
    from tests.fakes.gcp import FakeGcp

STATES = {0: "STATE_UNSPECIFIED", 1: "ACTIVE", 2: "INACTIVE"}
SEVERITIES = {0: "SEVERITY_UNSPECIFIED", 1: "CRITICAL", 2: "HIGH", 3: "MEDIUM", 4: "LOW"}
FINDING_CLASSES = {0: "FINDING_CLASS_UNSPECIFIED", 1: "THREAT", 2: "VULNERABILITY", 3: "MISCONFIGURATION",
                   4: "OBSERVATION", 5: "SCC_ERROR"}  # fmt: skip
_ENUMS = {"state": STATES, "severity": SEVERITIES, "findingClass": FINDING_CLASSES}
MUTABLE = ("state", "externalUri", "sourceProperties", "eventTime", "severity", "findingClass", "description",
           "mute", "category", "resourceName")  # fmt: skip
IMMUTABLE_AFTER_CREATE = ("category", "resourceName")
_FINDING_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _enum(field_name: str, value: Any) -> Any:
    names = _ENUMS.get(field_name)
    if names is None:
        return value
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        return names.get(int(value), str(value))
    if value not in names.values():
        raise ApiError(400, f"Invalid value for enum field {field_name}: {value!r}")
    return value


def _normalise(finding: dict[str, Any]) -> dict[str, Any]:
    return {_camel(k): _enum(_camel(k), v) for k, v in finding.items()}


def _out(req: RecordedRequest, finding: dict[str, Any]) -> dict[str, Any]:
    """The answer's spelling: enums as numbers when the client asked (`$alt=json;enum-encoding=int`)."""
    finding = copy.deepcopy(finding)
    if "enum-encoding=int" in ((req.query.get("$alt") or [""])[0]):
        for key, names in _ENUMS.items():
            if key in finding:
                finding[key] = next(n for n, v in names.items() if v == finding[key])
    return finding


@dataclass
class SccFake:
    lock: threading.RLock = field(default_factory=threading.RLock)
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    findings: dict[str, dict[str, Any]] = field(default_factory=dict)  # full name -> finding (API spelling)
    writes: Counter[str] = field(default_factory=Counter)  # create / patch / setState
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1000))

    def create_source(self, org: str, display_name: str = "drift-auditor") -> str:
        with self.lock:
            name = f"{org}/sources/{next(self._ids)}"
            self.sources[name] = {"name": name, "displayName": display_name}
            return name

    def in_source(self, source: str) -> dict[str, dict[str, Any]]:
        """Findings of one source, by their finding id."""
        with self.lock:
            return {n.rsplit("/", 1)[1]: copy.deepcopy(f) for n, f in self.findings.items()
                    if n.startswith(source + "/findings/")}


@dataclass
class PubSubFake:
    lock: threading.RLock = field(default_factory=threading.RLock)
    topics: set[str] = field(default_factory=set)
    messages: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # topic -> published messages
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic  # ack deadlines run on it: a test may pass its own

    def create_topic(self, name: str) -> str:
        with self.lock:
            self.topics.add(name)
            self.messages.setdefault(name, [])
        return name


@dataclass
class Subscription:
    topic: str
    ack_deadline: float = 10.0
    cursor: int = 0  # topic messages taken so far
    # ackId -> [message, leased until (PubSubFake.clock), delivery attempts]; each delivery gets a new ackId (the
    # entry moves), so acknowledging an earlier delivery's ackId does nothing, as with the real service
    outstanding: dict[str, list[Any]] = field(default_factory=dict)
    acked: int = 0
    dead_letter: bool = False  # created with a deadLetterPolicy: pulls then say each message's deliveryAttempt
    nacked: int = 0  # ackIds whose deadline was set to 0

    def delivered(self, message_id: str) -> int:
        """How many times the message was delivered (0: acknowledged, or never pulled)."""
        return next((e[2] for e in self.outstanding.values() if e[0]["messageId"] == message_id), 0)


def scc(fake: FakeGcp) -> SccFake:
    return fake.ext.setdefault("scc", SccFake())  # type: ignore[no-any-return]


def pubsub(fake: FakeGcp) -> PubSubFake:
    return fake.ext.setdefault("pubsub", PubSubFake())  # type: ignore[no-any-return]


# -- Security Command Center ----------------------------------------------------------------------------------------


def _create_source(fake: FakeGcp, req: RecordedRequest, org: str) -> dict[str, Any]:
    body = req.body or {}
    name = scc(fake).create_source(org, body.get("displayName", ""))
    return scc(fake).sources[name]


def _get_source(fake: FakeGcp, req: RecordedRequest, source: str) -> dict[str, Any]:
    s = scc(fake).sources.get(source)
    if s is None:
        raise ApiError(404, f"Requested entity was not found: {source}")
    return s


def _create_finding(fake: FakeGcp, req: RecordedRequest, source: str) -> dict[str, Any]:
    state = scc(fake)
    fid = (req.query.get("findingId") or [""])[0]
    if not _FINDING_ID.match(fid):
        raise ApiError(400, f"Invalid finding id {fid!r}: it must be alphanumeric, 1 to 32 characters")
    with state.lock:
        if source not in state.sources:
            raise ApiError(404, f"Requested entity was not found: {source}")
        name = f"{source}/findings/{fid}"
        if name in state.findings:
            raise ApiError(409, f"Requested entity already exists: {name}", status="ALREADY_EXISTS")
        body = _normalise(req.body or {})
        now = _now()
        finding = {k: v for k, v in body.items() if k in MUTABLE}
        finding.update(name=name, parent=source, createTime=now)
        finding.setdefault("state", "ACTIVE")
        finding.setdefault("eventTime", now)
        state.findings[name] = finding
        state.writes["create"] += 1
        return _out(req, finding)


def _patch_finding(fake: FakeGcp, req: RecordedRequest, source: str, fid: str) -> dict[str, Any]:
    state = scc(fake)
    name = f"{source}/findings/{fid}"
    raw_mask = (req.query.get("updateMask") or [""])[0]
    mask = [_camel(m.strip()) for m in raw_mask.split(",") if m.strip()]
    body = _normalise(req.body or {})
    with state.lock:
        if source not in state.sources:
            raise ApiError(404, f"Requested entity was not found: {source}")
        current = state.findings.get(name)
        fields = mask or [k for k in MUTABLE if k in body]
        unknown = [m for m in mask if m.split(".")[0] not in MUTABLE]
        if unknown:
            raise ApiError(400, f"Invalid update mask: {', '.join(unknown)}")
        if current is None:
            # UpdateFinding creates the finding when it does not exist.
            current = {"name": name, "parent": source, "createTime": _now(), "state": "ACTIVE"}
        else:
            for f in IMMUTABLE_AFTER_CREATE:
                if f in fields and f in body and body[f] != current.get(f):
                    raise ApiError(400, f"{f} is immutable after creation time")
        for f in fields:
            top = f.split(".")[0]
            if top == "sourceProperties" and "." in f:
                key = f.split(".", 1)[1]
                props = current.setdefault("sourceProperties", {})
                if key in (body.get("sourceProperties") or {}):
                    props[key] = body["sourceProperties"][key]
                else:
                    props.pop(key, None)
            elif top in body:
                current[top] = body[top]
            else:
                current.pop(top, None)
        current["eventTime"] = body.get("eventTime") or _now()
        state.findings[name] = current
        state.writes["patch"] += 1
        return _out(req, current)


def _set_state(fake: FakeGcp, req: RecordedRequest, source: str, fid: str) -> dict[str, Any]:
    state = scc(fake)
    name = f"{source}/findings/{fid}"
    body = _normalise(req.body or {})
    with state.lock:
        current = state.findings.get(name)
        if current is None:
            raise ApiError(404, f"Requested entity was not found: {name}")
        if body.get("state") not in ("ACTIVE", "INACTIVE"):
            raise ApiError(400, f"Invalid state {body.get('state')!r}")
        current["state"] = body["state"]
        current["eventTime"] = body.get("startTime") or _now()
        state.writes["setState"] += 1
        return _out(req, current)


_TERM = re.compile(r'^\s*(?P<field>[A-Za-z_.]+)\s*=\s*"(?P<value>[^"]*)"\s*$')


def _matches(finding: dict[str, Any], flt: str) -> bool:
    if not flt.strip():
        return True
    for term in re.split(r"\s+AND\s+", flt.strip()):
        m = _TERM.match(term)
        if m is None:
            raise ApiError(400, f"Invalid filter: {term!r}")
        path = [_camel(p) for p in m["field"].split(".")]
        value: Any = finding
        for p in path:
            value = value.get(p) if isinstance(value, dict) else None
        if str(value) != m["value"]:
            return False
    return True


def _list_findings(fake: FakeGcp, req: RecordedRequest, source: str) -> dict[str, Any]:
    state = scc(fake)
    flt = (req.query.get("filter") or [""])[0]
    size = int((req.query.get("pageSize") or ["10"])[0] or 10)
    size = min(max(size, 1), 1000)
    token = (req.query.get("pageToken") or ["0"])[0] or "0"
    start = int(token) if token.isdigit() else 0
    org, _, src = source.rpartition("/sources/")
    with state.lock:
        if src != "-" and source not in state.sources:
            raise ApiError(404, f"Requested entity was not found: {source}")
        prefix = f"{org}/sources/" if src == "-" else f"{source}/findings/"
        names = sorted(n for n in state.findings if n.startswith(prefix))
        hits = [_out(req, state.findings[n]) for n in names if _matches(state.findings[n], flt)]
    page = hits[start : start + size]
    out: dict[str, Any] = {"listFindingsResults": [{"finding": f} for f in page], "readTime": _now(),
                           "totalSize": len(hits)}
    if start + size < len(hits):
        out["nextPageToken"] = str(start + size)
    return out


# -- Pub/Sub --------------------------------------------------------------------------------------------------------


def _create_topic(fake: FakeGcp, req: RecordedRequest, topic: str) -> dict[str, Any]:
    pubsub(fake).create_topic(topic)
    return {"name": topic}


def _publish(fake: FakeGcp, req: RecordedRequest, topic: str) -> dict[str, Any]:
    state = pubsub(fake)
    messages = (req.body or {}).get("messages") or []
    if not messages:
        raise ApiError(400, "The request contains no messages")
    ids = []
    with state.lock:
        if topic not in state.topics:
            raise ApiError(404, f"Resource not found (resource={topic.rsplit('/', 1)[1]}).")
        for m in messages:
            data = base64.b64decode(m.get("data") or "")
            mid = str(next(state._ids))
            state.messages[topic].append({"data": data, "attributes": dict(m.get("attributes") or {}),
                                          "messageId": mid, "orderingKey": m.get("orderingKey", ""),
                                          "publishTime": _now()})
            ids.append(mid)
    return {"messageIds": ids}


def _create_subscription(fake: FakeGcp, req: RecordedRequest, sub: str) -> dict[str, Any]:
    state = pubsub(fake)
    body = req.body or {}
    with state.lock:
        if body.get("topic") not in state.topics:
            raise ApiError(404, "Resource not found (resource=topic).")
        state.subscriptions[sub] = Subscription(body["topic"], float(body.get("ackDeadlineSeconds", 10)),
                                                len(state.messages[body["topic"]]),
                                                dead_letter=bool(body.get("deadLetterPolicy")))
    return {"name": sub, "topic": body["topic"], "ackDeadlineSeconds": int(body.get("ackDeadlineSeconds", 10))}


def _subscription(fake: FakeGcp, sub: str) -> Subscription:
    s = pubsub(fake).subscriptions.get(sub)
    if s is None:
        raise ApiError(404, f"Resource not found (resource={sub.rsplit('/', 1)[1]}).")
    return s


def _pull(fake: FakeGcp, req: RecordedRequest, sub: str) -> dict[str, Any]:
    state = pubsub(fake)
    limit = int((req.body or {}).get("maxMessages") or 0)
    if limit <= 0:
        raise ApiError(400, "maxMessages must be positive")
    out: list[dict[str, Any]] = []
    with state.lock:
        s = _subscription(fake, sub)
        for m in state.messages[s.topic][s.cursor:]:  # published since the last pull: fanned out to this one
            s.outstanding[f"ack-{m['messageId']}-0"] = [m, 0.0, 0]
        s.cursor = len(state.messages[s.topic])
        now = state.clock()
        for ack_id, entry in list(s.outstanding.items()):
            if len(out) >= limit:
                break
            if entry[1] > now:
                continue  # leased to an earlier pull whose deadline has not passed
            entry[1], entry[2] = now + s.ack_deadline, entry[2] + 1
            m = entry[0]
            new_id = f"ack-{m['messageId']}-{entry[2]}"
            del s.outstanding[ack_id]
            s.outstanding[new_id] = entry
            received: dict[str, Any] = {"ackId": new_id, "message": {
                "data": base64.b64encode(m["data"]).decode(), "attributes": m["attributes"],
                "messageId": m["messageId"], "publishTime": m["publishTime"]}}
            if s.dead_letter:  # the service fills it only for a subscription with a dead-letter policy
                received["deliveryAttempt"] = entry[2]
            out.append(received)
    return {"receivedMessages": out}


def _acknowledge(fake: FakeGcp, req: RecordedRequest, sub: str) -> dict[str, Any]:
    state = pubsub(fake)
    with state.lock:
        s = _subscription(fake, sub)
        for ack_id in (req.body or {}).get("ackIds") or []:
            if s.outstanding.pop(ack_id, None) is not None:
                s.acked += 1
    return {}


def _modify_ack_deadline(fake: FakeGcp, req: RecordedRequest, sub: str) -> dict[str, Any]:
    state = pubsub(fake)
    body = req.body or {}
    seconds = int(body.get("ackDeadlineSeconds") or 0)  # proto3 JSON leaves a 0 out
    if not 0 <= seconds <= 600:
        raise ApiError(400, f"Invalid ack deadline {seconds}: it must be between 0 and 600 seconds")
    with state.lock:
        s = _subscription(fake, sub)
        now = state.clock()
        for ack_id in body.get("ackIds") or []:
            entry = s.outstanding.get(ack_id)
            if entry is not None:  # an earlier delivery's ackId, or an acknowledged one: nothing to do
                entry[1] = now + seconds
                s.nacked += seconds == 0
    return {}


_SRC = r"(?P<source>organizations/[^/]+/sources/[^/]+)"
EXTRA_ROUTES.extend([
    ("POST", re.compile(r"^/v1/(?P<org>organizations/[^/]+)/sources$"), _create_source),
    ("GET", re.compile(rf"^/v1/{_SRC}$"), _get_source),
    ("POST", re.compile(rf"^/v1/{_SRC}/findings$"), _create_finding),
    ("GET", re.compile(rf"^/v1/{_SRC}/findings$"), _list_findings),
    ("PATCH", re.compile(rf"^/v1/{_SRC}/findings/(?P<fid>[^/:]+)$"), _patch_finding),
    ("POST", re.compile(rf"^/v1/{_SRC}/findings/(?P<fid>[^/:]+):setState$"), _set_state),
    ("PUT", re.compile(r"^/v1/(?P<topic>projects/[^/]+/topics/[^/:]+)$"), _create_topic),
    ("POST", re.compile(r"^/v1/(?P<topic>projects/[^/]+/topics/[^/:]+):publish$"), _publish),
    ("PUT", re.compile(r"^/v1/(?P<sub>projects/[^/]+/subscriptions/[^/:]+)$"), _create_subscription),
    ("POST", re.compile(r"^/v1/(?P<sub>projects/[^/]+/subscriptions/[^/:]+):pull$"), _pull),
    ("POST", re.compile(r"^/v1/(?P<sub>projects/[^/]+/subscriptions/[^/:]+):acknowledge$"), _acknowledge),
    ("POST", re.compile(r"^/v1/(?P<sub>projects/[^/]+/subscriptions/[^/:]+):modifyAckDeadline$"),
     _modify_ack_deadline),
])  # fmt: skip
