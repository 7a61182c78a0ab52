"""The option table of `tkmia run` and the grids it builds from the method registry."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import tkmia.experiments
from tkmia.cli import build_parser
from tkmia.cli.options import (
    CONFIG_KEYS,
    OPTIONS,
    RUN_OPTIONS,
    check_values,
    complete,
    load_config,
    resolve_options,
)
from tkmia.cli.run import build_methods, build_settings, check_grid
from tkmia.data.digits import CLASSES as DIGITS_CLASSES
from tkmia.errors import InputError
from tkmia.experiments.builtin import default_method
from tkmia.experiments.methods import HYPERPARAMETERS, REGISTRY
from tkmia.experiments.settings import check_setting_grid, method_grid, setting_grid

#: a valid flag value and the same value in TOML, per option kind
_SAMPLE = {int: ("3", "3"), float: ("0.5", "0.5"), str: ("abc", '"abc"'), Path: ("p", '"p"')}


def _run_help() -> str:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices["run"].format_help()


def test_every_option_is_a_flag_and_the_same_config_key(tmp_path: Path) -> None:
    for option in RUN_OPTIONS:
        if not option.in_config:
            continue
        if option.kind is bool:
            flag, toml = [option.flag], f"{option.name} = true\n"
        else:
            text, value = _SAMPLE[option.kind]
            text = option.choices[0] if option.choices else text
            value = f'"{option.choices[0]}"' if option.choices else value
            flag = [option.flag, text]
            value = f"[{value}]" if option.many else value
            toml = f"{option.name.replace('_', '-')} = {value}\n"
        config = tmp_path / f"{option.name}.toml"
        config.write_text(toml)
        a = resolve_options(build_parser().parse_args(["run", *flag]))
        b = resolve_options(build_parser().parse_args(["run", "--config", str(config)]))
        assert a[option.name] == b[option.name], option.name
    assert "config" not in CONFIG_KEYS and "no_progress" not in CONFIG_KEYS


def test_hyperparameter_flags_come_from_the_registry() -> None:
    assert {hp.option for hp in HYPERPARAMETERS.values()} <= CONFIG_KEYS
    for hp in HYPERPARAMETERS.values():
        option = OPTIONS[hp.option]
        assert option.many and option.kind is hp.kind and option.check is not None
        assert option.check.expected == hp.expected and option.choices == hp.choices
    args = build_parser().parse_args(["run", "--max-iter", "5,7", "--lr", "1e-3"])
    assert args.max_iter == [5, 7] and args.lr == [1e-3]


def test_help_shows_defaults_choices_and_the_report_folder() -> None:
    text = " ".join(_run_help().split())
    shows = ["(default: 2,3)", "{global,random,both}", "(default: digits)", "(default: 0.01)"]
    for shown in [*shows, "(default: 0)", "(default: per method: tkmia 0.0001"]:
        assert shown in text, shown
    assert ", ".join(REGISTRY) in text  # the methods, named by the registry
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert "results folder" in sub.choices["report"].format_help()


def test_values_are_checked_against_choices_and_ranges() -> None:
    for opts, message in (
        ({"seed": -7}, "--seed must be a non-negative integer, got -7"),
        ({"scheme": "diagonal"}, "--scheme must be one of global, random, both, got 'diagonal'"),
        ({"lr": [1e-3, float("nan")]}, "--lr must be a finite number > 0, got nan"),
        ({"k": [2, 0]}, r"--k must be a positive integer \(1 <= k < c\), got 0"),
        ({"image_size": 0}, "--image-size must be a positive integer, got 0"),
    ):
        with pytest.raises(InputError, match=message):
            check_values(complete(opts))
    check_values(complete({}))  # the defaults pass


def test_complete_fills_defaults_and_treats_an_empty_list_as_not_given(tmp_path: Path) -> None:
    opts = complete({"k": [], "seed": 4})
    assert opts["k"] == [2, 3] and opts["seed"] == 4 and opts["scheme"] == "both"
    assert "samples" not in opts  # its default depends on the dataset
    config = tmp_path / "c.toml"
    config.write_text("k = 4\nmax_iter = [1, 2]\n")
    assert load_config(config) == {"k": [4], "max_iter": [1, 2]}


def test_method_grid_order_defaults_and_ignored_hyperparameters() -> None:
    configs = build_methods({"methods": ["kfool", "tkmia"], "lr": [1e-3, 5e-4], "max_iter": [5]})
    assert [c.key for c in configs] == [
        "kfool-it5-os0-linimage",  # lr is not kFool's: ignored for it
        "tkmia-lr0.001-lam0.001-it5",
        "tkmia-lr0.0005-lam0.001-it5",
    ]
    everything = method_grid(list(REGISTRY), {})
    assert [c.method for c in everything] == list(REGISTRY)
    assert everything == [default_method(name) for name in REGISTRY]
    assert [c.params for c in everything] == [dict(s.defaults) for s in REGISTRY.values()]
    grid = method_grid(["tkmia"], {"lr": [1, 2], "lam": [3, 4], "max_iter": [5, 6]})
    assert [tuple(c.params.values())[:3] for c in grid] == [
        (lr, lam, it) for lr in (1, 2) for lam in (3, 4) for it in (5, 6)
    ]
    with pytest.raises(InputError, match="'fgsm'"):
        method_grid(["tkmia", "fgsm"], {})


def test_kfool_hyperparameters_are_flags_config_keys_and_grid_axes(tmp_path: Path) -> None:
    """``--kfool-linearize`` (the keyword ``linearize``) and ``--overshoot`` come from the
    registry: lists, grid axes, checked, and in the configuration key; the legacy
    configuration (tanh, 0.02) keeps the key of the files written before they existed."""
    argv = ["run", "--methods", "kfool", "--kfool-linearize", "tanh,image", "--overshoot", "0.02"]
    opts = resolve_options(build_parser().parse_args(argv))
    assert opts["kfool_linearize"] == ["tanh", "image"] and opts["overshoot"] == [0.02]
    keys = [c.key for c in build_methods(opts)]
    assert keys == ["kfool-it300", "kfool-it300-os0.02-linimage"]  # the first: legacy
    assert build_methods(opts)[0].params == {
        "max_iter": 300,
        "overshoot": 0.02,
        "linearize": "tanh",
        "success_rule": "paper",
        "quantize": 0,
    }
    config = tmp_path / "c.toml"
    config.write_text('kfool-linearize = "tanh"\novershoot = [0, 0.02]\n')
    assert load_config(config) == {"kfool_linearize": ["tanh"], "overshoot": [0, 0.02]}
    with pytest.raises(InputError, match="--kfool-linearize must be one of image, tanh, got 'x'"):
        check_values({"kfool_linearize": ["x"]})
    with pytest.raises(InputError, match="--overshoot must be a finite number >= 0"):
        check_values({"overshoot": [-1.0]})
    assert "--kfool-linearize {image,tanh}[,...]" in " ".join(_run_help().split())


def test_setting_grid_is_checked_before_and_after_the_classes_are_known() -> None:
    check_setting_grid(["global", "random"], [2], [1, 2], [1])  # t for S2 only: fine
    for args, message in (
        ((["global"], [2], [1], [1]), "random scheme only"),
        ((["random"], [2], [3], [None]), "1 <= n <= k = 2, got 3"),
        ((["random"], [3], [2], [4]), "1 <= t <= n = 2, got 4"),
        ((["global"], [0], [1], [None]), "k must be an integer with 1 <= k, got 0"),
    ):
        with pytest.raises(InputError, match=message):
            check_setting_grid(*args)
    check_grid({"k": [25]})  # k < c waits for the classes
    with pytest.raises(InputError, match="c = 20, got 25"):
        build_settings({"k": [25]}, "digits", list(DIGITS_CLASSES))
    keys = [s.key for s in build_settings({"threshold": [1]}, "digits", list(DIGITS_CLASSES))]
    assert keys == [
        "global-k2-sevens", "global-k2-red_low", "random-k2-n1-t1", "random-k2-n2-t1",
        "global-k3-sevens", "global-k3-red_low", "random-k3-n1-t1", "random-k3-n2-t1",
    ]  # fmt: skip
    with pytest.raises(InputError, match="no built-in label groups"):
        setting_grid(["global"], [1], [], [1], [None], "folder", ["a", "b"])


def test_experiments_import_neither_the_cli_nor_the_reports() -> None:
    for path in Path(tkmia.experiments.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                assert not name.startswith(("tkmia.cli", "tkmia.reports")), (path.name, name)


@pytest.mark.parametrize(
    ("given", "scheme"),
    [
        ({"n": [2]}, "random"),
        ({"threshold": [1]}, "random"),
        ({"groups": ["sevens"]}, "global"),
        ({"groups": ["sevens"], "n": [1]}, None),  # both schemes' options: both schemes
        ({"k": [2]}, None),
        ({"n": [2], "scheme": "both"}, "both"),
    ],
)
def test_scheme_only_options_imply_their_scheme(given, scheme) -> None:
    from tkmia.cli.consistency import apply_implications

    opts = apply_implications(given, {})
    assert opts.get("scheme") == scheme
    assert complete(opts)["scheme"] == (scheme or "both")


def test_every_help_line_shows_the_default_and_the_choices() -> None:
    """Each option of each command says its default in its help (a switch is off by
    default, a required option has none) and, where only some values are accepted, the
    choices; a positional argument says what it is."""
    import argparse

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(commands.choices) >= {"run", "train", "report"}
    for name, sub in commands.choices.items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            where = f"tkmia {name} {action.option_strings or action.dest}"
            assert action.help, where
            if not action.option_strings or action.required:
                continue
            if not isinstance(action, argparse._StoreTrueAction):
                assert "default" in action.help, where
            if action.choices and action.metavar is not None:  # else argparse shows {a,b}
                assert all(str(c) in action.metavar + action.help for c in action.choices), where
