"""drift-auditor: keeps a Google Cloud organization and its GKE clusters on their security baseline.

Data flow: collect -> snapshot -> evaluate -> findings -> metrics / report / plan -> apply.
Only `auditor.collect` and `remediations` touch the network.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("drift-auditor")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+source"
