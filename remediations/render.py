"""Stage 6, plan: the reviewer's view of a plan, in Markdown and HTML (jinja2 templates beside this module).

Each change shows its target, the token it was planned against, the edits with the rules and findings they answer,
and a line diff of every binding, rule or subject it touches; the summary shows the blast radius.
"""

from __future__ import annotations

import difflib
from typing import Any

import jinja2
import yaml

from auditor.report.escape import md_code, md_fence, md_text, plain, plain_lines
from remediations.plan import Plan

_env_md = jinja2.Environment(
    loader=jinja2.PackageLoader("remediations", "templates"), autoescape=False, trim_blocks=True, lstrip_blocks=True,
    keep_trailing_newline=True,
)
# Names, members, tokens and API messages in the Markdown plan come from the organization: the template passes each
# through `md` (text), `code` / `tcode` (a code span; in a table cell), or `plain` / `lines` inside a block fenced by
# `fence`.
_env_md.filters.update(
    md=md_text, code=lambda v: md_code(v, in_table=False), tcode=md_code, plain=plain, lines=plain_lines
)
_env_md.globals["fence"] = md_fence
_env_html = jinja2.Environment(
    loader=jinja2.PackageLoader("remediations", "templates"), autoescape=True, trim_blocks=True, lstrip_blocks=True
)


def _yaml(v: Any) -> list[str]:
    if v is None:
        return []
    return yaml.safe_dump(v, sort_keys=True, default_flow_style=False, width=100).splitlines()


def diff_lines(before: Any, after: Any) -> list[str]:
    """A full-context line diff: `-` removed, `+` added, ` ` kept."""
    out = []
    for line in difflib.ndiff(_yaml(before), _yaml(after)):
        if line.startswith("? "):
            continue
        out.append(line[0] + line[2:])
    return out


def _context(plan: Plan, title: str) -> dict[str, Any]:
    changes = []
    for c in plan.changes:
        d = c.to_dict()
        d["diffs"] = [{"item": x["item"], "lines": diff_lines(x["before"], x["after"])} for x in c.diff]
        d["family"] = c.family
        d["modes"] = c.modes
        changes.append(d)
    return {"plan": plan.to_dict(), "changes": changes, "title": title}


def render_markdown(plan: Plan, title: str = "Remediation plan") -> str:
    return _env_md.get_template("plan.md.j2").render(**_context(plan, title))


def render_html(plan: Plan, title: str = "Remediation plan", fragment: bool = False) -> str:
    """A standalone page, or (fragment=True) a <section> for the daemon's /report."""
    return _env_html.get_template("plan.html.j2").render(fragment=fragment, **_context(plan, title))
