"""The GKE family: cluster settings, planned only (see `remediations.gke`, which builds the manual steps).

Its kinds make manual steps in the plan (the command, the API call, what it disrupts); apply never runs them, so
the family has no writer, target or guard of its own.
"""

from __future__ import annotations

from auditor.plugins import remediation_families
from remediations.families.base import Kind

NAME = "gke"


class GkeFamily:
    name = NAME
    token_field = ""
    kinds = (
        Kind("gke.update_cluster", NAME, "change a cluster setting (planned only: command, API call, impact)", True),
        Kind("gke.recreate_node_pool", NAME, "replace a node pool with a fixed one (planned only)", True),
        Kind("gke.add_sandbox_node_pool", NAME, "add a GKE Sandbox (gVisor) node pool (planned only)", True),
    )


FAMILY = remediation_families.add(NAME, GkeFamily())
