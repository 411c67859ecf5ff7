"""Shared scaffolding for the example scripts: command line, progress bars, figures.

Every example is run as ``python examples/NAME.py`` (full version) or with ``--quick``
(a reduced version, under two minutes on two CPU cores; the test suite runs it). Each saves
its figures as PNG files in ``--out`` (default ``docs/figures``, where the docs gallery
picks them up) and prints its headline figure as its last line.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on CI machines; must precede pyplot's import

import matplotlib.pyplot as plt  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

DOCS_FIGURES = Path(__file__).resolve().parent.parent / "docs" / "figures"


def example_parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser with the options every example shares.

    Args:
        doc: the example module's docstring; its first line becomes the description.
    """
    parser = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="reduced version (under two minutes on two CPU cores)")
    parser.add_argument("--out", type=Path, default=DOCS_FIGURES,
                        help=f"folder for the PNG figures (default: {DOCS_FIGURES})")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def progress(iterable, **kwargs):
    """A tqdm progress bar on stderr; silent when ``CVXLAYERS_NO_PROGRESS`` is set."""
    disable = bool(os.environ.get("CVXLAYERS_NO_PROGRESS"))
    return tqdm(iterable, file=sys.stderr, dynamic_ncols=True, disable=disable, **kwargs)


def save_figure(fig, out: Path, name: str) -> Path:
    """Save ``fig`` as ``out/name.png`` (creating ``out``), close it, return the path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    print(f"saved {path}")
    return path


def headline(text: str) -> None:
    """Print the example's headline figure; by convention it is the script's last line."""
    print(text, flush=True)
