"""Experiments: settings, the protocol runner, per-sample records and summaries."""

from tkmia.experiments.runner import RunConfig, run
from tkmia.experiments.settings import METHODS, MethodConfig, Setting

__all__ = ["METHODS", "MethodConfig", "RunConfig", "Setting", "run"]
