"""`auditor serve`: the daemon (scheduled cycles, state, metrics, report), or one cycle with --once."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import click

from auditor.cli.options import verdict_options
from auditor.settings import load_settings

if TYPE_CHECKING:
    from auditor.cycle import CycleOutcome


@click.command("serve")
@click.option(
    "--config", "-c", "config", type=click.Path(dir_okay=False), default=None,
    help="YAML configuration file. Every key can also come from AUDITOR_* environment variables.",
)
@click.option("--once", is_flag=True, help="Run one cycle, print its summary as JSON, and exit (cron, CI).")
@click.option("--check", is_flag=True, help="Validate the configuration and the rules, print a summary, and exit.")
@verdict_options
def command(config: str | None, once: bool, check: bool, fail_on: str, allow_partial: bool) -> None:
    """Run audit cycles on a schedule and serve /metrics, /report, /findings.json, /healthz and /readyz.

    \b
    With --once, the exit status is that of `auditor scan`:
      0  clean: every source read, every rule evaluated, no open finding at or above --fail-on
      1  open findings at or above --fail-on
      2  bad input, rules or usage (a source that cannot be read at all, a broken rule file)
      3  partial (records skipped, asset types not read, rules not evaluated, evaluation errors) and nothing
         worse, or a cycle that failed for another reason; --allow-partial turns a partial result into 0 or 1
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
    auditor = Auditor(settings, store, publish_at_start=not once, retain=not once)
    if once:
        out = auditor.run_cycle()
        store.close()
        summary: dict[str, object] = {
            "cycle": out.cycle_id,
            "outcome": out.outcome,
            "new": out.recorded.new_count if out.recorded else 0,
            "resolved": out.recorded.resolved_count if out.recorded else 0,
            "open": out.recorded.open if out.recorded else None,
            "error": out.error,
        }
        if out.result is not None:
            summary["complete"] = out.result.complete
            summary["partial_reasons"] = out.result.partial_reasons()
        click.echo(json.dumps(summary))
        sys.exit(once_status(out, fail_on, allow_partial))
    sys.exit(Daemon(settings, auditor).run())


def once_status(out: CycleOutcome, fail_on: str, allow_partial: bool) -> int:
    """The exit status of `serve --once` (the contract of `auditor scan`, see auditor.scan)."""
    from auditor.scan import EXIT_INVALID, EXIT_PARTIAL

    if out.result is None:
        # nothing was evaluated: bad input or rules (a source or rule file that cannot be read) is 2, and any other
        # failure is at least partial, never clean nor "findings"
        return EXIT_INVALID if out.invalid_input else EXIT_PARTIAL
    if out.outcome == "failed":  # evaluated, but the store failed: not a clean cycle either
        return EXIT_PARTIAL
    return out.result.exit_status(fail_on, allow_partial)
