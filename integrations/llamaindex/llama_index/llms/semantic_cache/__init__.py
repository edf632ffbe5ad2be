"""LlamaIndex integration of async-semantic-llm-cache."""
