"""The data path: dataset splits as uint8 tensors (decoding, the on-disk cache, device/host/disk storage, streamed
parquet shards). Imports only ``_base`` and ``_nets``. Internal: plugins import from ``framework.api``."""
