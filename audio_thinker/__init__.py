"""audio-thinker: `audio_thinker.core` is the bottom layer every package shares (config, vocabularies, protocol,
rewards, data, model families); `audio_thinker.app` is the program (CLI, driver, evaluation, dashboard).
docs/architecture.md has the layers."""
