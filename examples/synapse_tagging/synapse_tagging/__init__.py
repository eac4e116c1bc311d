"""Example user project: tag the strongest presynaptic partners of a materialization version."""

from synapse_tagging.flow import TaggingSummary, tag_top_presynaptic

__all__ = ["TaggingSummary", "tag_top_presynaptic"]
