"""Hydra configuration: the run schema, component nodes in the ConfigStore, composition and the checks made before
anything is built. Imports the layers below. Internal: plugins import from ``framework.api``."""
