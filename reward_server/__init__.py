"""The reward judge as a standalone FastAPI service, its backends, and a light httpx client (no torch import)."""
