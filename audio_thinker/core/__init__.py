"""The bottom layer: what every other package shares; it imports neither Ray, DeepSpeed nor vLLM."""
