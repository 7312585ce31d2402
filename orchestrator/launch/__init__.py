"""Launching on a cluster: `orchestrator submit` (pre-flight checks, then Ray Jobs) and a
local multi-node cluster on loopback (`orchestrator cluster up/down/status`)."""
