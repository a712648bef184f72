"""The plugin contract: hook specifications, ``RunView`` (what of a run plugins may use), the component protocols,
the plugin manager, and feature extraction (embeddings of any network at any stage). Imports ``_base``, ``_nets``
and ``_data``. Internal: plugins import from ``framework.api``."""
