"""The demo's ``evaclip`` commands (``demo``, ``data``), registered as ``evaclip.commands`` entry points."""
