"""Loading models tkmia did not build: TorchScript, ``torch.export`` archives, factories.

None of these loaders unpickles Python objects: TorchScript archives are read by
``torch.jit.load`` (TorchScript's own restricted unpickler), ``torch.export`` archives by
``torch.export.load`` with every ``torch.load`` inside it forced to ``weights_only`` and
archives holding pickled Python objects refused. A factory is the user's own Python code,
imported and called only because the user named it.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from tkmia.errors import InputError, MissingFileError

__all__ = ["call_factory", "import_named", "load_exported", "load_torchscript"]


def _first_line(err: BaseException) -> str:
    """The error's type and its first sentence (torch's messages run on)."""
    text = (str(err).strip().splitlines() or [""])[0].split(". ")[0][:300]
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def load_torchscript(path: Path) -> nn.Module:
    """A TorchScript archive written by ``torch.jit.save``, on the CPU.

    Raises:
        MissingFileError: no such file.
        InputError: the file is not a TorchScript archive (a ``torch.save`` pickle among
            them: those are never unpickled).
    """
    if not path.is_file():
        raise MissingFileError(f"model file {str(path)!r} not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # jit.* is deprecated in torch 2.9+
            module: nn.Module = torch.jit.load(str(path), map_location="cpu")
    except Exception as err:  # torch raises RuntimeError or ValueError, depending on the file
        raise InputError(
            f"{str(path)!r} is not a TorchScript archive ({_first_line(err)}); a .pt/.ts "
            "model must be written by torch.jit.save(torch.jit.script(model) or "
            "torch.jit.trace(model, x)); pickled models (torch.save) are refused"
        ) from None
    return module


#: where a torch.export archive keeps constants that it restores with pickle.loads
_OPAQUE = "/data/constants/"


def _pickled_objects(path: Path) -> list[str]:
    """Entries of a ``.pt2`` archive that ``torch.export.load`` would ``pickle.loads``."""
    from torch.export.pt2_archive.constants import OPAQUE_OBJ_FILENAME_PREFIX

    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return [n for n in names if _OPAQUE + OPAQUE_OBJ_FILENAME_PREFIX in "/" + n]


@contextlib.contextmanager
def _weights_only() -> Iterator[None]:
    """Every ``torch.load`` in the block is ``weights_only=True``, even where torch's own
    code asks otherwise (torch's ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` switch)."""
    key = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
    before = os.environ.get(key)
    os.environ[key] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ[key]
        else:
            os.environ[key] = before


def load_exported(path: Path) -> nn.Module:
    """The module of a ``torch.export`` archive (``torch.export.save``), on the CPU.

    Raises:
        MissingFileError: no such file.
        InputError: not a ``.pt2`` archive, or one that holds pickled Python objects.
    """
    if not path.is_file():
        raise MissingFileError(f"model file {str(path)!r} not found")
    why = "it is not a torch.export archive"
    try:
        pickled = _pickled_objects(path)
        if pickled:
            why = f"it holds pickled Python objects ({pickled[0]}), which could run code"
            raise InputError(why)
        with warnings.catch_warnings(), _weights_only():
            warnings.simplefilter("ignore")  # torch's notes on weights' devices
            program = torch.export.load(str(path))
        module: nn.Module = program.module()
    except Exception as err:
        detail = "" if isinstance(err, InputError) else f" ({_first_line(err)})"
        raise InputError(
            f"cannot load {str(path)!r}: {why}{detail}; a .pt2 model must be written by "
            "torch.export.save(torch.export.export(model, (x,), dynamic_shapes=...))"
        ) from None
    return module


def _import(module: str, spec: str, what: str = "model factory") -> object:
    """The module named ``module``: a dotted module name, or a ``.py`` file."""
    if module.endswith(".py"):
        path = Path(module)
        if not path.is_file():
            raise MissingFileError(f"{what} file {module!r} (in {spec!r}) not found")
        name = f"_tkmia_factory_{abs(hash(str(path.resolve())))}"
        loader_spec = importlib.util.spec_from_file_location(name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise InputError(f"cannot import {module!r} (in {spec!r}) as a Python file")
        loaded = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = loaded  # dataclasses and pickling look their module up here
        try:
            loader_spec.loader.exec_module(loaded)
        except BaseException:
            del sys.modules[name]
            raise
        return loaded
    return importlib.import_module(module)


def _user_error(err: BaseException) -> str:
    """One line on an exception the user's code raised (``SystemExit`` explained: a
    factory must return a model, not end the program)."""
    if isinstance(err, SystemExit):
        return (
            f"it called sys.exit({'' if err.code is None else repr(err.code)}) (SystemExit); a "
            "factory must return a torch.nn.Module, not end the program"
        )
    return _first_line(err)


def call_factory(spec: str, module: str, function: str) -> nn.Module:
    """Import ``module`` (``pkg.mod`` or ``path/to/file.py``), call ``function()``, and
    check that it returned an ``nn.Module``. This runs the user's code.

    Raises:
        MissingFileError: a ``.py`` file that does not exist.
        InputError: the import or the call fails (with the error's first line), there is
            no such function, or it returns something else than an ``nn.Module``.
    """
    try:
        loaded = _import(module, spec)
    except InputError:
        raise
    except KeyboardInterrupt:
        raise
    except BaseException as err:  # the user's code (sys.exit too): its error in one line
        raise InputError(
            f"model factory {spec!r}: importing {module!r} failed: {_user_error(err)}"
        ) from None
    factory = getattr(loaded, function, None)
    if not callable(factory):
        raise InputError(
            f"model factory {spec!r}: {module!r} has no function {function!r}"
            + ("" if factory is None else f" (it is a {type(factory).__name__})")
        )
    try:
        net = factory()
    except KeyboardInterrupt:
        raise
    except BaseException as err:  # SystemExit (sys.exit) and the like included
        why = _user_error(err)
        raise InputError(f"model factory {spec!r}: {function}() failed: {why}") from None
    if not isinstance(net, nn.Module):
        raise InputError(
            f"model factory {spec!r}: {function}() returned a {type(net).__name__}; expected "
            "a torch.nn.Module"
        )
    return net


def import_named(spec: str, what: str) -> object:
    """The object ``name`` of ``module:name`` (``module`` a dotted name or a ``.py`` file),
    imported: this runs the user's code. ``what`` names it in messages ("attack class").

    Raises:
        MissingFileError: a ``.py`` file that does not exist.
        InputError: not of the form ``module:name``, the import fails (with the error's
            first line), or the module has no such name.
    """
    module, _, name = spec.rpartition(":")
    if not module or not name.isidentifier():
        raise InputError(f"{what} {spec!r}: expected path/to/file.py:Name or package.module:Name")
    try:
        loaded = _import(module, spec, what)
    except (InputError, MissingFileError):
        raise
    except Exception as err:  # the user's code: report its error in one line
        raise InputError(
            f"{what} {spec!r}: importing {module!r} failed: {_first_line(err)}"
        ) from None
    if not hasattr(loaded, name):
        raise InputError(f"{what} {spec!r}: {module!r} has no {name!r}")
    return getattr(loaded, name)
