"""audio-thinker shared pieces: CLI, config, data, protocol and rewards, driver, evaluation, dashboard."""
