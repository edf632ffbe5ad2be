"""Embedders: the protocol, the default local model (ONNX), the torch path, and adapters for your own."""

from semantic_llm_cache.embeddings.adapters import CallableEmbedder, LangChainEmbedder, LlamaIndexEmbedder, as_embedder
from semantic_llm_cache.embeddings.base import Embedder, normalized_matrix
from semantic_llm_cache.embeddings.bundled import DEFAULT_MODEL_NAME
from semantic_llm_cache.embeddings.local import BUNDLED_MODEL_NAME, LocalEmbedder, bundled_model_path
from semantic_llm_cache.embeddings.onnx import OnnxEmbedder

__all__ = [
    "BUNDLED_MODEL_NAME",
    "DEFAULT_MODEL_NAME",
    "CallableEmbedder",
    "Embedder",
    "LangChainEmbedder",
    "LlamaIndexEmbedder",
    "LocalEmbedder",
    "OnnxEmbedder",
    "as_embedder",
    "bundled_model_path",
    "normalized_matrix",
]
