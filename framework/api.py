"""The public face of rtlab: every name a plugin, an analysis or a script may use, importable from one place.

    from framework.api import hookimpl, RtlabError, MetricKind, load_checkpoint

The built-in plugins import from here and nowhere else in ``framework`` (a test walks ``plugins/``), so a
third-party package can do whatever a built-in one does. Anything not listed in ``__all__`` is internal and may
change without notice. docs/api.md documents every name, grouped as below.
"""

from __future__ import annotations

from framework import __version__
from framework._base import paths
from framework._base.clock import Clock
from framework._base.commands import CommandSet
from framework._base.errors import PluginError, RtlabError, unknown_name
from framework._base.files import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    cache_dir,
)
from framework._base.intervals import (
    CONTROLS,
    bootstrap_interval,
    control_key,
    format_gain,
    gain,
)
from framework._base.keys import (
    ResultKey,
    format_key,
    format_point,
    layer_suffix,
    metric_of,
    parse_key,
    parse_point,
)
from framework._base.markers import hookimpl
from framework._base.metrics import ACCURACY, MetricKind, from_summary, kind_of, merged
from framework._base.options import AnalysisOptions, BackboneOptions, DataOptions
from framework._base.provenance import check_recorded_plugins
from framework._base.registry import (
    NoOptions,
    Registry,
    describe_options,
    option_help,
    to_options,
)
from framework._base.seeding import stream_seed
from framework._config.compose import check_config, compose, register_configs, with_values
from framework._contract.components import (
    Augment,
    DatasetSource,
    Evaluator,
    HeadFactory,
    InitScheme,
    Loss,
    Objective,
    OptimizerFactory,
    Stateful,
    StudentInit,
    TeacherInit,
    Updater,
)
from framework._contract.features import (
    Features,
    bn_control,
    embed,
    eval_mode,
    extract,
    layer_embedder,
)
from framework._contract.plugin_manager import (
    PluginManager,
    create_plugin_manager,
    get_plugin_manager,
)
from framework._contract.runview import RunView
from framework._data.data import ImageData, load_image_data
from framework._data.datacache import listing_key
from framework._data.streaming import stream_files_of
from framework._nets import distributed
from framework._nets.checkpoint import (
    load_checkpoint,
    load_weights,
    prefixed,
    save_checkpoint,
    strip_prefix,
)
from framework._nets.device import (
    cpu_has_bf16_units,
    one_cpu_thread,
    resolve_device,
    resolve_dtype,
)
from framework._nets.models import (
    BackboneAdapter,
    Network,
    clone,
    forward_views,
    freeze,
    has_batchnorm,
    load_network_checkpoint,
    load_network_state,
    network_from_checkpoint,
    parameter_distance,
)
from framework._nets.placement import Placement
from framework._run.evaluation import BUILTIN_TARGETS, features
from framework._run.analysis import AnalysisContext
from framework._run.loop import Run, run_training
from framework._run.opened import LoadedRun, load_run
from framework.cli.main import train_command

__all__ = [
    "__version__",
    # writing a plugin: hooks, the registry, options, commands
    "hookimpl", "Registry", "NoOptions", "to_options", "describe_options", "option_help", "BackboneOptions",
    "DataOptions", "AnalysisOptions", "PluginManager", "create_plugin_manager", "get_plugin_manager", "CommandSet",
    "check_recorded_plugins",
    # what components are: the protocols of each kind
    "Stateful", "DatasetSource", "HeadFactory", "InitScheme", "TeacherInit", "StudentInit", "Updater", "Objective",
    "Loss", "Augment", "OptimizerFactory", "Evaluator", "BackboneAdapter",
    # errors
    "RtlabError", "PluginError", "unknown_name",
    # a run: what hooks receive, composing and training
    "RunView", "Run", "Clock", "run_training", "train_command", "compose", "check_config", "register_configs",
    "with_values", "stream_seed",
    # studying runs: opening a finished run, analyses
    "load_run", "LoadedRun", "AnalysisContext",
    # networks and checkpoints
    "Network", "clone", "freeze", "has_batchnorm", "parameter_distance", "forward_views", "load_network_state",
    "load_network_checkpoint", "network_from_checkpoint", "load_checkpoint", "save_checkpoint", "load_weights",
    "prefixed", "strip_prefix",
    # files: the run folder's names, atomic writes, the cache folder
    "paths", "atomic_write_text", "atomic_write_bytes", "atomic_write_json", "cache_dir",
    # data
    "ImageData", "load_image_data", "listing_key", "stream_files_of",
    # devices and processes
    "Placement", "resolve_device", "resolve_dtype", "cpu_has_bf16_units", "one_cpu_thread", "distributed",
    # features: embeddings of any network at any stage
    "Features", "BUILTIN_TARGETS", "features", "embed", "extract", "bn_control", "eval_mode", "layer_embedder",
    # results: metric kinds, result keys, gains over controls
    "MetricKind", "ACCURACY", "kind_of", "from_summary", "merged", "ResultKey", "format_key", "format_point",
    "parse_key", "parse_point", "layer_suffix", "metric_of", "CONTROLS", "control_key", "gain", "format_gain",
    "bootstrap_interval",
]
