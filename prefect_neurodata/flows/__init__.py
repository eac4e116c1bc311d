"""The flows: AIND asset registration, QC attachment and metadata sync (CAVE flows join here).

Import a flow from its module, e.g.
``from prefect_neurodata.flows.registration import register_assets``; this package does not
import them eagerly, so loading one flow does not pay for the others.
"""
