"""CAVE stand-in: global (info, auth, schema, state) and local (chunkedgraph, L2 cache,
annotation, materialization) services over SQLAlchemy and an in-memory chunkedgraph model.

Run it with ``python -m prefect_neurodata.sandbox.cave --global-port A --local-port B`` or as the
uvicorn factory ``prefect_neurodata.sandbox.cave.app:create_app``; seed it with
``POST /__sandbox__/seed``. See :mod:`.app` and :mod:`.world`.
"""
