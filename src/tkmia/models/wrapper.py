"""The normalising wrapper every tkmia model is seen through (defined in
:mod:`tkmia.normalize`, below both the attacks and the models, which share it)."""

from tkmia.normalize import Normalized

__all__ = ["Normalized"]
