"""Offline demo data: real image-text sets built from apt/npm registry packages.

``prepare(out)`` fetches the packages (``apt-get download`` + ``dpkg -x``, ``npm pack``), renders the art to
small RGB squares and writes webdataset training shards, zero-shot image folders and retrieval caption CSVs,
with leakage control against the evaluation sets, a manifest and a NOTICE. See ``build.py`` for the layout.
"""
from evaclip_demo.offline.build import (DEFAULT_OUT, ENV_VAR, PrepareOptions, PrepareResult, prepare,
                                        resolve_out, up_to_date)
from evaclip_demo.offline.fetch import FetchError, Fetched, fetch_from_registry, fetch_packages
from evaclip_demo.offline.packages import PACKAGES, Package

__all__ = ["DEFAULT_OUT", "ENV_VAR", "PrepareOptions", "PrepareResult", "prepare", "resolve_out", "up_to_date",
           "FetchError", "Fetched", "fetch_from_registry", "fetch_packages", "PACKAGES", "Package"]
