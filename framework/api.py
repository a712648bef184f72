"""The public face of rtlab: every name a plugin, an analysis or a script may use, importable from one place.

    from framework.api import hookimpl, RtlabError, MetricKind, load_checkpoint

The built-in plugins import from here and nowhere else in ``framework`` (a test walks ``plugins/``), so a
third-party package can do whatever a built-in one does. Anything not listed in ``__all__`` is internal and may
change without notice. docs/api.md documents every name, grouped as below.
"""

from __future__ import annotations

from framework import __version__
from framework import distributed
from framework.checkpoint import (
    atomic_write_bytes,
    atomic_write_text,
    load_checkpoint,
    load_weights,
    prefixed,
    save_checkpoint,
    strip_prefix,
)
from framework.cli import CommandSet, train_command
from framework.components import (
    Augment,
    DatasetSource,
    Evaluator,
    HeadFactory,
    Loss,
    Objective,
    OptimizerFactory,
    Stateful,
    StudentInit,
    TeacherInit,
    Updater,
)
from framework.config import check_config, compose, register_configs
from framework.data import ImageData, load_image_data
from framework.datacache import listing_key
from framework.device import (check_parameters_fit, cpu_has_bf16_units, one_cpu_thread, resolve_device,
                              resolve_dtype)
from framework.errors import PluginError, RtlabError, unknown_name
from framework.evaluation import BUILTIN_TARGETS, Features, bn_control, extract, features
from framework.hookspecs import hookimpl
from framework.intervals import CONTROLS, bootstrap_interval, control_key, format_gain, gain
from framework.metrics import ACCURACY, MetricKind, from_summary, kind_of, merged
from framework.models import (
    BackboneAdapter,
    Network,
    clone,
    forward_views,
    freeze,
    has_batchnorm,
    load_network_checkpoint,
    load_network_state,
    network_from_checkpoint,
)
from framework.options import BackboneOptions, DataOptions
from framework.plugin_manager import PluginManager, create_plugin_manager, get_plugin_manager
from framework.provenance import check_recorded_plugins
from framework.registry import NoOptions, Registry, describe_options, option_help, to_options
from framework.run import Run, run_training
from framework.runlock import LOCK_NAME, RunLock, clear_unfinished, live_owner, refuse_if_live
from framework.runview import RunView
from framework.seeding import stream_seed
from framework.parquet import check_parquet_files, stream_files_of

__all__ = [
    "__version__",
    # plugins and components
    "hookimpl", "Registry", "NoOptions", "to_options", "describe_options", "option_help", "BackboneOptions",
    "DataOptions", "PluginManager", "create_plugin_manager", "get_plugin_manager", "CommandSet",
    "check_recorded_plugins",
    # component protocols
    "Stateful", "DatasetSource", "HeadFactory", "TeacherInit", "StudentInit", "Updater", "Objective", "Loss",
    "Augment", "OptimizerFactory", "Evaluator", "BackboneAdapter",
    # errors
    "RtlabError", "PluginError", "unknown_name",
    # the run
    "RunView", "Run", "run_training", "train_command", "compose", "check_config", "register_configs",
    "stream_seed", "RunLock", "LOCK_NAME", "live_owner", "refuse_if_live", "clear_unfinished",
    # networks and checkpoints
    "Network", "clone", "freeze", "has_batchnorm", "forward_views", "load_network_state",
    "load_network_checkpoint", "network_from_checkpoint", "load_checkpoint", "save_checkpoint", "load_weights",
    "prefixed", "strip_prefix", "atomic_write_text", "atomic_write_bytes",
    # data
    "ImageData", "load_image_data", "listing_key", "stream_files_of", "check_parquet_files",
    # devices and processes
    "resolve_device", "resolve_dtype", "cpu_has_bf16_units", "one_cpu_thread", "distributed", "check_parameters_fit",
    # evaluation and results
    "Features", "BUILTIN_TARGETS", "features", "extract", "bn_control", "MetricKind", "ACCURACY", "kind_of",
    "from_summary", "merged", "CONTROLS", "control_key", "gain", "format_gain", "bootstrap_interval",
]
