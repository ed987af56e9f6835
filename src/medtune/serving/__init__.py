"""Serving: the OpenAI-compatible HTTP API and the Gradio chat page over medtune models."""
