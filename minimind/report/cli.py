"""``python -m minimind.report SWEEP``: the table on stdout, report.csv, report.md and report.png beside it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from minimind.report.plotting import DEFAULT_COLOR_BY, DEFAULT_SPLIT_BY, plot
from minimind.report.reading import last_line
from minimind.report.study import format_study, markdown, read_study
from minimind.report.sweep import SweepError, collect
from minimind.report.table import format_table, write_csv, write_markdown


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m minimind.report",
        description="Compare the jobs of a Hydra multirun sweep: a table on stdout, report.csv, "
                    "report.md and report.png (loss and grad norm vs tokens) in the sweep dir.")
    p.add_argument("sweep_dir", help="the sweep directory, e.g. multirun/2026-11-28/12-00-00")
    p.add_argument("--csv", metavar="PATH", help="where to write the CSV (default: <sweep dir>/report.csv)")
    p.add_argument("--png", metavar="PATH", help="where to write the plot (default: <sweep dir>/report.png)")
    p.add_argument("--md", metavar="PATH", help="where to write the markdown report (default: <sweep dir>/report.md)")
    p.add_argument("--no-plot", action="store_true", help="do not draw the plot")
    p.add_argument("--color-by", metavar="KEY", default=DEFAULT_COLOR_BY,
                   help=f"one colour per value of this key (default: {DEFAULT_COLOR_BY})")
    p.add_argument("--split-by", metavar="KEY", default=DEFAULT_SPLIT_BY,
                   help=f"one panel per value of this key (default: {DEFAULT_SPLIT_BY})")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The CLI: 0 when the report was made (failed jobs included), 2 for a bad sweep dir,
    1 when the CSV or the PNG could not be written."""
    args = _parser().parse_args(argv)
    sweep = Path(args.sweep_dir)
    try:
        rows = collect(sweep)
    except SweepError as e:
        print(f"minimind.report: error: {e}", file=sys.stderr)
        return 2
    print(format_table(rows))
    study = read_study(sweep)
    if study is not None:
        print(format_study(study))
    sys.stdout.flush()
    rc = 0
    csv_path = Path(args.csv) if args.csv else sweep / "report.csv"
    try:
        write_csv(rows, csv_path)
        print(f"wrote {csv_path}", file=sys.stderr)
    except OSError as e:
        print(f"minimind.report: error: cannot write {csv_path}: {e}", file=sys.stderr)
        rc = 1
    md_path = Path(args.md) if args.md else sweep / "report.md"
    try:
        write_markdown(rows, md_path, title=str(sweep), extra=markdown(study) if study else ())
        print(f"wrote {md_path}", file=sys.stderr)
    except OSError as e:
        print(f"minimind.report: error: cannot write {md_path}: {e}", file=sys.stderr)
        rc = 1
    if not args.no_plot:
        png_path = Path(args.png) if args.png else sweep / "report.png"
        try:
            plot(rows, png_path, color_by=args.color_by, split_by=args.split_by, title=str(sweep))
            print(f"wrote {png_path}", file=sys.stderr)
        except Exception as e:  # noqa: BLE001 - the table and the CSV are made; say why the plot is not
            print(f"minimind.report: error: cannot draw {png_path}: {last_line(e)}", file=sys.stderr)
            rc = 1
    return rc
