"""LangGraph sidecar: a streaming reverse proxy with LLM-aware timeouts, breaking and metrics."""
__version__ = "0.1.0"
