"""The fake servers' fixtures, for the tests of the fakes themselves."""

from tests.fakes.gcp import fake_gcp, gcp_endpoint  # noqa: F401 - fixtures
from tests.fakes.kube import kube_api, kubeconfig  # noqa: F401 - fixtures
