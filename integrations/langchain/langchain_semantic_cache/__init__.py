"""LangChain integration of async-semantic-llm-cache."""
