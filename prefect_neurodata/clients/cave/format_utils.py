"""Formatting of cloud paths for different consumers (seed: ``caveclient.format_utils``).

`output_map` maps a ``format_for`` name (``raw``, ``cloudvolume``, ``neuroglancer``,
``cave_explorer``/``cave-explorer``/``spelunker``) to a formatter. Behaviour follows the observed
caveclient table (reference 6.3) except for three of its bugs, fixed deliberately:

* ``gs://bucket/path`` keeps its bucket when converted to an https URL;
* the neuroglancer format of a precomputed source is ``precomputed://gs://...`` (or
  ``precomputed://https://...``), not a ``graphene://`` path;
* the cave-explorer format of a precomputed source is ``precomputed://https://...``, not None.

Example:
    ```python
    from prefect_neurodata.clients.cave.format_utils import output_map

    output_map["cloudvolume"]("gs://bucket/em")  # 'precomputed://https://storage.googleapis.com/bucket/em'
    ```
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlparse

GCS_HTTPS = "https://storage.googleapis.com"


def _strip_precomputed(objurl: str) -> str:
    return objurl[len("precomputed://") :] if objurl.startswith("precomputed://") else objurl


def _is_graphene(objurl: str) -> bool:
    if objurl.startswith("graphene://"):
        return True
    path = urlparse(objurl).path
    return objurl.startswith(("http://", "https://")) and "/segmentation/" in path


def _gs_to_https(url: str) -> str:
    """``gs://bucket/path`` -> ``https://storage.googleapis.com/bucket/path``."""
    return GCS_HTTPS + "/" + url[len("gs://") :]


def _https_to_gs(url: str) -> str:
    """``https://storage.googleapis.com/bucket/path`` -> ``gs://bucket/path`` (else unchanged)."""
    if url.startswith(GCS_HTTPS + "/"):
        return "gs://" + url[len(GCS_HTTPS) + 1 :]
    return url


def format_raw(objurl: str | None) -> str | None:
    """Return the path unchanged."""
    return objurl


def format_precomputed_neuroglancer(objurl: str | None) -> str | None:
    """Precomputed source for Neuroglancer: ``precomputed://gs://...`` for Google Cloud Storage,
    ``precomputed://https://...`` otherwise."""
    if objurl is None:
        return None
    inner = _https_to_gs(_strip_precomputed(objurl))
    return "precomputed://" + inner


def format_precomputed_https(objurl: str | None) -> str | None:
    """Precomputed source over https (for CloudVolume): ``precomputed://https://...``.

    A ``precomputed://gs://`` path is left as is (CloudVolume reads it directly).
    """
    if objurl is None:
        return None
    if objurl.startswith("precomputed://"):
        return objurl
    if objurl.startswith("gs://"):
        return "precomputed://" + _gs_to_https(objurl)
    return "precomputed://" + objurl


def format_graphene(objurl: str | None) -> str | None:
    """``graphene://https://...`` path."""
    if objurl is None:
        return None
    if objurl.startswith("graphene://"):
        return objurl
    return "graphene://" + objurl


def format_verbose_graphene(objurl: str | None) -> str | None:
    """``graphene://middleauth+https://...`` path (for CAVE explorer / Spelunker)."""
    if objurl is None:
        return None
    inner = objurl[len("graphene://") :] if objurl.startswith("graphene://") else objurl
    if inner.startswith("middleauth+"):
        return "graphene://" + inner
    return "graphene://middleauth+" + inner


def format_cloudvolume(objurl: str | None) -> str | None:
    """Path for CloudVolume: graphene paths unchanged, others as precomputed over https."""
    if objurl is None or objurl.startswith("graphene://"):
        return objurl
    return format_precomputed_https(objurl)


def format_neuroglancer(objurl: str | None) -> str | None:
    """Path for Neuroglancer: ``graphene://`` for chunkedgraph sources, precomputed otherwise."""
    if objurl is None:
        return None
    if _is_graphene(objurl):
        return format_graphene(objurl)
    return format_precomputed_neuroglancer(objurl)


def format_cave_explorer(objurl: str | None) -> str | None:
    """Path for CAVE explorer / Spelunker: ``graphene://middleauth+https://...`` for
    chunkedgraph sources, ``precomputed://https://...`` otherwise."""
    if objurl is None:
        return None
    if _is_graphene(objurl):
        return format_verbose_graphene(objurl)
    inner = _strip_precomputed(objurl)
    if inner.startswith("gs://"):
        inner = _gs_to_https(inner)
    return "precomputed://" + inner


output_map: dict[str, Callable[[str | None], str | None]] = {
    "raw": format_raw,
    "cloudvolume": format_cloudvolume,
    "neuroglancer": format_neuroglancer,
    "cave_explorer": format_cave_explorer,
    "cave-explorer": format_cave_explorer,
    "spelunker": format_cave_explorer,
}


def formatter(format_for: str) -> Callable[[str | None], str | None]:
    """The formatter for ``format_for``.

    Raises:
        ValueError: Unknown format name (the message lists the known ones).
    """
    try:
        return output_map[format_for]
    except KeyError:
        raise ValueError(f"format_for={format_for!r} is not one of {sorted(output_map)}") from None
