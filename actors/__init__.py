"""Ray actors with declared resources, all on one generic `ActorGroup`: the policy trainer group, the reference
model, the rollout workers, the judge server, and the trainer -> worker weight sync."""
