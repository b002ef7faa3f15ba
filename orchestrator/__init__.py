"""Per-feature worker orchestrator on Kubernetes: `relaygate orchestrator`."""
