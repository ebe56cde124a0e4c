"""Suite-wide: this folder is on sys.path (pytest puts a conftest's folder there), so `proc_kit` imports anywhere."""
