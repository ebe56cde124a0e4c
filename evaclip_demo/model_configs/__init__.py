"""The demo's model configs (``demo-teacher``, ``demo-student``), found by evaclip through the
``evaclip.model_configs`` entry point; this folder is never imported for them."""
