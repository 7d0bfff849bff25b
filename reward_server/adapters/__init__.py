"""The judge inside other teams' trainers: reward functions for TRL and verl that call the judge over HTTP through
`reward_server.client` (retries; a judge that cannot answer raises, never a reward of 0). They import neither
TRL, verl, torch nor Ray."""
