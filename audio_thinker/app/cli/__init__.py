"""The `audio-thinker` command line."""
