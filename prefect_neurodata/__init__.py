"""Prefect tasks, blocks and flows for the AIND metadata services and CAVE connectomics services."""

__version__ = "0.1.0"
