"""Helpers built on the CAVE clients (seed: ``caveclient.tools``)."""

from __future__ import annotations

from .stage import StagedAnnotations

__all__ = ["StagedAnnotations"]
