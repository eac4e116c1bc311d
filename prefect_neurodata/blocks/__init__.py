"""Prefect credential blocks; each builds the matching seed-compatible client.

Register them with ``prefect block register -m prefect_neurodata.blocks``.
"""

from .cave import CaveCredentials
from .docdb import DocDbApiCredentials
from .docdb_ssh import DocumentDbSshCredentials
from .rds import RdsCredentials

__all__ = ["CaveCredentials", "DocDbApiCredentials", "DocumentDbSshCredentials", "RdsCredentials"]
