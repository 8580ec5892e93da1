"""Outbound sinks: findings carried to where security teams work.

- `scc`: Security Command Center, one SCC finding per drift-auditor finding, state following the store;
- `notify`: drift events (new, resolved, reopened) as CloudEvents to webhooks and Pub/Sub topics, through a
  bounded on-disk queue so an outage of a sink loses nothing;
- `ledger`: what each sink was last given (one table beside the state store's), so reruns write only changes.

Like `auditor/collect/` and `remediations/`, this package talks to the network; the stages before it never do.
"""
