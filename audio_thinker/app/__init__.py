"""The application layer: the `audio-thinker` commands and what they run (driver, evaluation, dashboard, tools)."""
