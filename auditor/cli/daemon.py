"""`auditor serve`: the daemon (scheduled cycles, state, metrics, report), or one cycle with --once."""

from __future__ import annotations

import json
import sys

import click

from auditor.settings import load_settings


@click.command("serve")
@click.option(
    "--config", "-c", "config", type=click.Path(dir_okay=False), default=None,
    help="YAML configuration file. Every key can also come from AUDITOR_* environment variables.",
)
@click.option("--once", is_flag=True, help="Run one cycle, print its summary as JSON, and exit (cron, CI).")
@click.option("--check", is_flag=True, help="Validate the configuration and the rules, print a summary, and exit.")
def command(config: str | None, once: bool, check: bool) -> None:
    """Run audit cycles on a schedule and serve /metrics, /report, /findings.json, /healthz and /readyz.

    With --once: exit 0 when the cycle read everything, 1 when it was partial or failed.
    """
    # Imported here so `auditor scan` does not pay for the scheduler and HTTP server.
    from auditor.cycle import Auditor
    from auditor.daemon import Daemon
    from auditor.logs import configure
    from auditor.state import Store, redact, state_target

    settings = load_settings(config)
    if check:
        from auditor.evaluate.rulebook import load_rules

        rules = load_rules(settings.rules or None)
        sch = settings.schedule
        click.echo(
            f"configuration OK: {len(settings.sources)} source(s), {len(rules)} rule(s), "
            f"schedule {sch.cron or f'every {sch.interval_seconds}s'}, state {redact(settings.state_target)}, "
            f"listen {settings.listen}, remediation {'on' if settings.remediation.enabled else 'off'}"
        )
        return
    # The daemon logs on stdout, where the Cloud Logging agent reads structured logs; --once keeps stdout for its
    # summary and logs on stderr.
    configure(settings.log_format, settings.log_level, stream=sys.stderr if once else sys.stdout)
    store = Store(*state_target(settings))
    auditor = Auditor(settings, store)
    if once:
        out = auditor.run_cycle()
        store.close()
        summary = {
            "cycle": out.cycle_id,
            "outcome": out.outcome,
            "new": out.recorded.new_count if out.recorded else 0,
            "resolved": out.recorded.resolved_count if out.recorded else 0,
            "open": out.recorded.open if out.recorded else None,
            "error": out.error,
        }
        click.echo(json.dumps(summary))
        sys.exit(0 if out.outcome == "success" else 1)
    sys.exit(Daemon(settings, auditor).run())
