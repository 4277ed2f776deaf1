"""Serving: the BentoML service that production traffic meets (see service.py)."""
