"""Generation engines behind one interface (vLLM, transformers) and chat-prompt rendering per model family."""
