from tests.fakes.gcp import fake_gcp, gcp_endpoint  # noqa: F401 - fixtures
