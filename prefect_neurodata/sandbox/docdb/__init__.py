"""DocDB REST API stand-in (see ``app.py``)."""
