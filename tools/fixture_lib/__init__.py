"""Helpers for tools/make_fixtures.py (reference fixtures made with HF transformers)."""
