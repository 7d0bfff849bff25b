"""Ray actors that host the parts in processes with declared resources: trainer group, reference model,
rollout workers, judge server."""
