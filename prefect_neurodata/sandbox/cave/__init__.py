"""CAVE stand-in: global (info, auth, schema, state) and local (chunkedgraph, L2 cache,
annotation, materialization) services over SQLAlchemy and an in-memory chunkedgraph model.

Run it with ``python -m prefect_neurodata.sandbox.cave --global-port A --local-port B`` or as the
uvicorn factory ``prefect_neurodata.sandbox.cave.app:create_app``; seed it with
``POST /__sandbox__/seed``. See :mod:`.app` and :mod:`.world`.
"""

#: Datastack the stand-in serves unless ``NEURODATA_SANDBOX_CAVE_DATASTACK`` names another.
DEFAULT_DATASTACK = "minnie_sandbox"
#: PCG table of :data:`DEFAULT_DATASTACK` (a datastack's table is ``<datastack>_pcg``).
DEFAULT_PCG_TABLE = f"{DEFAULT_DATASTACK}_pcg"
#: Voxel resolution of the segmentation (nm), as minnie65's.
VOXEL_RESOLUTION: tuple[float, float, float] = (4.0, 4.0, 40.0)
#: Inclusive ``(low, high)`` of the world sizes a seed request may ask for: larger worlds take
#: too long to build in the stand-in, smaller ones have no edits to show.
SEED_WORLD_LIMITS: dict[str, tuple[int, int]] = {
    "neurons": (2, 5_000),
    "neuron_length": (10, 10_000),
}
