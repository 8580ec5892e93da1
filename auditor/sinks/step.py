"""The daemon's outbound step, after a cycle is recorded: drift notifications, then Security Command Center.

Neither can fail a cycle: an error is logged and counted, and what was not delivered is delivered later (the
notification queues keep their events, the SCC ledger its marks).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from auditor.collect.retry import RetryPolicy
from auditor.logs import get_logger
from auditor.settings import Settings
from auditor.sinks.ledger import Ledger
from auditor.sinks.notify import Notifier, build_sinks
from auditor.sinks.scc import SccSync
from auditor.state import Recorded, Store


class OutboundStep:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.log = get_logger("auditor.sinks")
        cfg = settings.notifications
        self.notifier = (
            Notifier(cfg, build_sinks(cfg, settings.gcp_endpoint),
                     lambda sink, outcome, n: store.bump("notifications_total", {"sink": sink, "outcome": outcome}, n))
            if cfg.enabled else None
        )
        self._scc_client: Any = None

    @property
    def enabled(self) -> bool:
        return self.notifier is not None or self.settings.scc.enabled

    def queued(self) -> dict[str, int]:
        return self.notifier.queued() if self.notifier is not None else {}

    def oldest(self) -> dict[str, float | None]:
        return self.notifier.oldest() if self.notifier is not None else {}

    def run(self, recorded: Recorded, labels: Mapping[str, dict[str, str]] | None = None) -> dict[str, Any]:
        """`labels`: each loaded rule's labels, carried by its notifications."""
        out: dict[str, Any] = {}
        with Ledger(self.store) as ledger:
            if self.notifier is not None:
                try:
                    out["announced"] = self.notifier.announce(recorded.drift, ledger, baseline=recorded.baseline,
                                                              scope=self.settings.scope, labels=labels)
                    flushed = self.notifier.flush()
                    out["notifications"] = {"delivered": flushed.delivered, "queued": flushed.queued}
                    if flushed.errors:
                        out["notifications"]["errors"] = flushed.errors
                except Exception as exc:
                    self.log.exception("notify_error", error=f"{type(exc).__name__}: {exc}")
            if self.settings.scc.enabled:
                out["scc"] = self.sync_scc(ledger).to_dict()
        return out

    def sync_scc(self, ledger: Ledger) -> Any:
        from auditor.collect.gcp_clients import security_center_client
        from auditor.sinks.scc import SyncResult

        cfg = self.settings.scc
        try:
            if self._scc_client is None:
                self._scc_client = security_center_client(self.settings.gcp_endpoint)
            assert cfg.source is not None
            result = SccSync(self._scc_client, cfg.source, ledger, cfg.external_uri,
                             RetryPolicy(attempts=cfg.retry_attempts)).sync()
        except Exception as exc:
            self.log.exception("scc_error", error=f"{type(exc).__name__}: {exc}")
            result = SyncResult(failed=1, errors=[f"{type(exc).__name__}: {exc}"])
        for outcome in ("created", "updated", "state_changed", "failed"):
            n = getattr(result, outcome)
            if n:
                self.store.bump("scc_writes_total", {"outcome": outcome}, n)
        if result.failed:
            self.log.warning("scc_sync_incomplete", failed=result.failed, errors=result.errors[:5])
        return result
