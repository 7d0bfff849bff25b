"""Training: the GRPO driver and its parts, SFT, the run directory, planning and export."""
