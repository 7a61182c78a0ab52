"""A folder of images with a CSV label file (any classes).

The CSV (UTF-8, a header line first, standard CSV quoting) has the image path in its
first column, relative to ``root`` (an absolute path is used as is), in one of two
formats:

* **A, label names**: exactly two columns, the second named ``labels`` (or ``label``);
  each row holds the image's label names separated by ``;``::

      path,labels
      img/001.jpg,cat;dog
      img/002.jpg,person

  ``classes`` are the sorted union of the names.

* **B, a 0/1 matrix**: one column per class, named in the header, each cell ``0`` or
  ``1``::

      path,cat,dog,person
      img/001.jpg,1,1,0
      img/002.jpg,0,0,1

  ``classes`` are the header's names, in header order.

Rows without any label are dropped (counted in ``dropped``, with a warning).
"""

from __future__ import annotations

import csv as csv_module
import io
from pathlib import Path

import numpy as np

from tkmia.data.common import LAYOUT_HINT, ImageLabels, check_image_size, check_root, read_text
from tkmia.errors import InputError, MissingFileError

LAYOUT = "a CSV 'path,labels' (names joined by ';') or 'path,<class1>,<class2>,...' (0/1)"


def _find_csv(root: Path, csv: str | Path) -> Path:
    path = Path(csv).expanduser()
    if path.is_file():
        return path
    if not path.is_absolute() and (root / path).is_file():
        return root / path
    tried = [str(path)] + ([] if path.is_absolute() else [str(root / path)])
    raise MissingFileError(f"label CSV not found: tried {tried}; expected {LAYOUT}; {LAYOUT_HINT}")


class LabelFolder(ImageLabels):
    """Images under ``root`` labelled by a CSV (see the module docstring for the formats).

    Yields ``(image (3, S, S) float32 in [0, 1], labels (c,) float32 0/1)``.

    Args:
        root: the folder the CSV's image paths are relative to.
        csv: the label file; a relative path is looked up as given, then under ``root``.
        image_size: ``S``; images are resized to ``S × S``.

    Attributes: see :class:`~tkmia.data.common.ImageLabels`; also ``csv``, the label file.
    """

    dataset_name = "folder"

    def __init__(self, root: str | Path, csv: str | Path, image_size: int = 224) -> None:
        size = check_image_size(image_size)
        base = check_root(root, "folder", f"the images named in {LAYOUT}")
        self.csv = _find_csv(base, csv)
        rows = list(csv_module.reader(io.StringIO(read_text(self.csv))))
        rows = [row for row in rows if any(cell.strip() for cell in row)]
        if not rows:
            raise InputError(f"label CSV {str(self.csv)!r} is empty; expected {LAYOUT}")
        header = [cell.strip() for cell in rows[0]]
        body = rows[1:]
        if len(header) < 2:
            raise InputError(
                f"label CSV {str(self.csv)!r} has a header of {len(header)} column; "
                f"expected {LAYOUT}"
            )
        if len(header) == 2 and header[1].lower() in ("labels", "label"):
            classes, labels = self._names_format(body)
        else:
            classes, labels = self._matrix_format(header, body)
        paths = []
        for line, row in enumerate(body, start=2):
            name = row[0].strip()
            if not name:
                raise InputError(f"label CSV {str(self.csv)!r} line {line} has an empty path")
            path = Path(name).expanduser()
            paths.append(path if path.is_absolute() else base / path)
        super().__init__(classes, paths, labels, size, root=base)

    def _check_width(self, body: list[list[str]], width: int) -> None:
        for line, row in enumerate(body, start=2):
            if len(row) != width:
                raise InputError(
                    f"label CSV {str(self.csv)!r} line {line} has {len(row)} columns, "
                    f"the header {width}"
                )

    def _names_format(self, body: list[list[str]]) -> tuple[list[str], np.ndarray]:
        """Format A: ``path,labels`` with names joined by ``;``."""
        self._check_width(body, 2)
        names = [[name.strip() for name in row[1].split(";") if name.strip()] for row in body]
        classes = sorted({name for row in names for name in row})
        if not classes:
            raise InputError(f"label CSV {str(self.csv)!r} names no label at all")
        column = {name: j for j, name in enumerate(classes)}
        labels = np.zeros((len(body), len(classes)), dtype=np.float32)
        for i, row in enumerate(names):
            for name in row:
                labels[i, column[name]] = 1.0
        return classes, labels

    def _matrix_format(
        self, header: list[str], body: list[list[str]]
    ) -> tuple[list[str], np.ndarray]:
        """Format B: ``path,<class1>,<class2>,...`` with 0/1 cells."""
        classes = header[1:]
        if any(not name for name in classes):
            raise InputError(f"label CSV {str(self.csv)!r} has an empty class name in its header")
        repeated = sorted({name for name in classes if classes.count(name) > 1})
        if repeated:
            raise InputError(f"label CSV {str(self.csv)!r} repeats the classes {repeated}")
        self._check_width(body, len(header))
        labels = np.zeros((len(body), len(classes)), dtype=np.float32)
        for i, row in enumerate(body):
            for j, cell in enumerate(row[1:]):
                value = cell.strip()
                if value not in ("0", "1"):
                    raise InputError(
                        f"label CSV {str(self.csv)!r} line {i + 2}, column {classes[j]!r} is "
                        f"{value!r}; expected 0 or 1 (or use the format 'path,labels' with "
                        "names joined by ';')"
                    )
                labels[i, j] = float(value)
        return classes, labels
