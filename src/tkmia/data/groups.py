"""Label groups for scheme S1 (global): built-in groups per dataset and user specs.

Built-in groups (:data:`GROUPS`, dataset name → group name → label names):

* ``voc2012`` (paper Table 6): vehicles = aeroplane, bicycle, boat, bus, car, motorbike,
  train; animals = bird, cat, cow, dog, horse, sheep; household = bottle, chair,
  diningtable, pottedplant, sofa, tvmonitor; person = person.
* ``coco2014`` (paper Table 7, COCO's own category names): person = person;
  electrical_equipment = tv, laptop, mouse, remote, keyboard, cell phone, microwave,
  oven, toaster, refrigerator, hair drier; daily_necessities = backpack, umbrella,
  handbag, tie, suitcase, book, clock, vase, scissors, teddy bear, toothbrush;
  furniture = chair, couch, bed, dining table, toilet.
* ``nuswide`` (paper Table 8 names the groups only; members chosen here among the 81
  concepts, no concept in two groups): animals = animal, bear, birds, cat, cow, dog, elk,
  fish, fox, horses, tiger, whales, zebra; buildings = bridge, buildings, castle,
  cityscape, house, temple, tower, town; landscape = beach, clouds, glacier, lake,
  mountain, ocean, sky, sun, sunset, valley, waterfall; traffic = airport, boats, cars,
  harbor, plane, railroad, road, street, train, vehicle.
* ``digits`` (the built-in set, classes ``red_0 .. red_9, blue_0 .. blue_9``): sevens =
  red_7, blue_7; red_low = red_0 .. red_4; blue_high = blue_5 .. blue_9.

A group spec (:func:`resolve_group`) is a built-in group name of the dataset, label
names joined by ``+`` (``person+car``; a single label name works too), or a named group
``name=label1+label2``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

from tkmia.errors import InputError

GROUPS: dict[str, dict[str, list[str]]] = {
    "voc2012": {
        "vehicles": ["aeroplane", "bicycle", "boat", "bus", "car", "motorbike", "train"],
        "animals": ["bird", "cat", "cow", "dog", "horse", "sheep"],
        "household": ["bottle", "chair", "diningtable", "pottedplant", "sofa", "tvmonitor"],
        "person": ["person"],
    },
    "coco2014": {
        "person": ["person"],
        "electrical_equipment": [
            "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven",
            "toaster", "refrigerator", "hair drier",
        ],
        "daily_necessities": [
            "backpack", "umbrella", "handbag", "tie", "suitcase", "book", "clock", "vase",
            "scissors", "teddy bear", "toothbrush",
        ],
        "furniture": ["chair", "couch", "bed", "dining table", "toilet"],
    },
    "nuswide": {
        "animals": [
            "animal", "bear", "birds", "cat", "cow", "dog", "elk", "fish", "fox", "horses",
            "tiger", "whales", "zebra",
        ],
        "buildings": [
            "bridge", "buildings", "castle", "cityscape", "house", "temple", "tower", "town",
        ],
        "landscape": [
            "beach", "clouds", "glacier", "lake", "mountain", "ocean", "sky", "sun", "sunset",
            "valley", "waterfall",
        ],
        "traffic": [
            "airport", "boats", "cars", "harbor", "plane", "railroad", "road", "street",
            "train", "vehicle",
        ],
    },
    "digits": {
        "sevens": ["red_7", "blue_7"],
        "red_low": [f"red_{d}" for d in range(5)],
        "blue_high": [f"blue_{d}" for d in range(5, 10)],
    },
}  # fmt: skip

_HINT = "or label names joined by '+' (e.g. 'a+b'), or a named group 'name=a+b'"


def _norm(name: str) -> str:
    """Lower case, with '_', '-' and runs of spaces read as one space."""
    return re.sub(r"[\s_-]+", " ", name.strip().lower())


def _label_index(name: str, classes: Sequence[str]) -> int | None:
    """The index of label ``name``: exact, else unique after :func:`_norm`; else None."""
    if name in classes:
        return list(classes).index(name)
    matches = [i for i, c in enumerate(classes) if _norm(c) == _norm(name)]
    return matches[0] if len(matches) == 1 else None


def _unknown(token: str, spec: str, classes: Sequence[str], dataset: str) -> InputError:
    groups = list(GROUPS.get(dataset, {}))
    close = difflib.get_close_matches(token, list(classes) + groups, n=3)
    maybe = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
    return InputError(
        f"unknown label or group {token!r} in group spec {spec!r} for dataset {dataset!r}"
        f"{maybe}; built-in groups: {groups or 'none'}; labels: {list(classes)}; "
        f"give a group name {_HINT}"
    )


def resolve_group(spec: str, classes: Sequence[str], dataset: str) -> tuple[str, list[int]]:
    """The name and the label indices of a group spec.

    Args:
        spec: a built-in group name of ``dataset`` (see :data:`GROUPS`), label names joined
            by ``+`` (the name is the spec itself), or ``name=label1+label2``. In a ``+``
            list a token may also be a built-in group name (its labels are added). Label
            names match exactly, else case-insensitively with ``_``/``-``/space alike.
        classes: the dataset's ``c`` class names.
        dataset: the dataset's name (``voc2012``, ``coco2014``, ``nuswide``, ``digits``,
            ``folder``, ...); only used to look up built-in groups.

    Returns:
        ``(name, indices)``: indices into ``classes``, ascending and without repeats.

    Raises:
        InputError: an unknown group or label (the message lists the valid groups and
            labels), an empty spec, name or member.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise InputError(f"empty label group {spec!r}; give a built-in group name {_HINT}")
    spec = spec.strip()
    builtin = GROUPS.get(dataset, {})
    if "=" in spec:
        name, _, members = (part.strip() for part in spec.partition("="))
        if not name or "+" in name or "=" in members:
            raise InputError(
                f"bad group spec {spec!r}: a named group is 'name=label1+label2', with a "
                "non-empty name without '+' or '='"
            )
        if not members:
            raise InputError(f"group {name!r} in spec {spec!r} has no labels")
    elif spec in builtin:
        name, members = spec, "+".join(builtin[spec])
    else:
        name, members = spec, spec
    indices: set[int] = set()
    for token in (t.strip() for t in members.split("+")):
        if not token:
            raise InputError(
                f"group spec {spec!r} has an empty label name (two '+' in a row, or a "
                "leading or trailing '+')"
            )
        index = _label_index(token, classes)
        if index is not None:
            indices.add(index)
        elif token in builtin:
            for member in builtin[token]:
                member_index = _label_index(member, classes)
                if member_index is None:
                    raise _unknown(member, spec, classes, dataset)
                indices.add(member_index)
        else:
            raise _unknown(token, spec, classes, dataset)
    if not indices:
        raise InputError(f"group {name!r} (spec {spec!r}) is empty")
    return name, sorted(indices)
