"""The base layer, free of torch: errors, option dataclasses, the component registry, metric kinds and the result-key
grammar, files (atomic writes, the run folder's file names, the cache folder), seeds, commands, run locks,
bootstrap intervals and the expectations ``rtlab verify`` checks. Internal: plugins import from ``framework.api``."""
