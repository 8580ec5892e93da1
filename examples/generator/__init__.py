"""Builders of the example organization, one module per domain (common, iam, armor, gke)."""
