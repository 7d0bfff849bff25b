"""Generation engines behind one interface (vLLM, transformers), the one engine builder, and the transport that
moves new weights into them (buckets over the object store or a broadcast group)."""
