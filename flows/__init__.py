"""Prefect flows: they only orchestrate tuneloop's library steps."""
