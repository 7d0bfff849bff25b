"""Data preparation: synthetic audio QA, AVQA, CoT rationales, and the tiny models of the CPU demo."""
