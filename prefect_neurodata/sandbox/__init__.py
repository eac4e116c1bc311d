"""Local stand-ins for the remote services (DocDB REST API, CAVE, AWS) used by tests and demos.

The sandbox is an island: it imports no other ``prefect_neurodata`` layer, so a client bug cannot
hide behind a helper shared with the server.
"""
