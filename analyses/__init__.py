"""Experiments that turn models into tidy tables (``results.csv`` + ``meta.json``)."""
