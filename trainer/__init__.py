"""The GRPO objective, the DeepSpeed engine, checkpoints and Hugging Face export."""
