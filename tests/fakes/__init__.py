"""Local stand-ins for the APIs the auditor talks to (test support): `gcp` (Google Cloud REST) and `kube` (kmock)."""
