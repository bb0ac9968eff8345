"""The picture of a result and the batch index page.

:func:`write_report_png` draws the gland's outline on axial slices through it, a sagittal and a coronal
reformat through its centre, and a panel with the volumes, PSA density, confidence and flags. Voxels
are those of the input grid: the image is only reoriented by axis permutation and flips
(``sitk.DICOMOrient`` to LPS), never resampled, so an oblique scan is shown as acquired; the letters on
each view's edges come from the image's direction cosines (patient right on the viewer's left, as
radiologists read). :func:`write_index_html` writes one HTML page with a row per case (thumbnail,
volumes, PSA density, confidence, flags) whose columns sort on a click.

matplotlib (Agg) is imported only inside :func:`write_report_png`; it is an optional dependency.
"""

from __future__ import annotations

import html
import logging
import os
import textwrap
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
#: Axial slices shown (evenly spread from the gland's first to its last slice).
AXIAL_SLICES = 5
#: Margin (mm) around the gland's bounding box in every view.
MARGIN_MM = 35.0
_LPS = ("L", "P", "S")
_OPPOSITE = {"L": "R", "P": "A", "S": "I"}


def orientation_letters(vector_lps: Sequence[float]) -> str:
    """Letters for the patient direction a view axis points to: ``(1, 0, 0)`` -> ``"L"``; oblique -> ``"LA"``.

    Components of at least 0.35 are named, largest first.
    """
    v = np.asarray(vector_lps, dtype=float)
    v = v / max(np.linalg.norm(v), 1e-12)
    order = np.argsort(-np.abs(v))
    return "".join((_LPS[i] if v[i] > 0 else _OPPOSITE[_LPS[i]]) for i in order if abs(v[i]) >= 0.35)


def _lps_arrays(image: sitk.Image, labelmap: sitk.Image) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Image and labels permuted/flipped to LPS index order: ``(z, y, x)`` arrays, spacing (x, y, z) mm, direction."""
    img = sitk.DICOMOrient(image, "LPS")
    lab = sitk.DICOMOrient(labelmap, "LPS")
    direction = np.asarray(img.GetDirection(), dtype=float).reshape(3, 3)
    return (
        sitk.GetArrayFromImage(img).astype(np.float32),
        sitk.GetArrayFromImage(lab),
        np.asarray(img.GetSpacing(), dtype=float),
        direction,
    )


def _window(a: np.ndarray) -> Tuple[float, float]:
    sample = a[:: max(1, a.shape[0] // 16)]
    lo, hi = np.percentile(sample, (1.0, 99.5))
    return float(lo), float(max(hi, lo + 1e-6))


def _box(mask: np.ndarray, spacing_zyx: np.ndarray) -> List[slice]:
    """Index ranges of the gland's bounding box plus :data:`MARGIN_MM`, per ``(z, y, x)`` axis."""
    if not mask.any():
        return [slice(0, n) for n in mask.shape]
    out = []
    for axis, n in enumerate(mask.shape):
        idx = np.flatnonzero(np.moveaxis(mask, axis, 0).reshape(n, -1).any(axis=1))
        margin = int(round(MARGIN_MM / spacing_zyx[axis]))
        out.append(slice(max(0, idx[0] - margin), min(n, idx[-1] + margin + 1)))
    return out


def _draw(ax, picture, labels, colors, extent_aspect, letters, title) -> None:
    ax.imshow(picture, cmap="gray", vmin=0, vmax=1, aspect=extent_aspect, interpolation="nearest")
    for value, color in colors.items():
        m = (labels == value).astype(np.float32)
        if m.any() and min(m.shape) > 1:
            ax.contour(m, levels=[0.5], colors=[color], linewidths=1.2)
    left, right, top, bottom = letters
    style = {"color": "yellow", "fontsize": 9, "fontweight": "bold"}
    ax.text(0.02, 0.5, left, transform=ax.transAxes, ha="left", va="center", **style)
    ax.text(0.98, 0.5, right, transform=ax.transAxes, ha="right", va="center", **style)
    ax.text(0.5, 0.98, top, transform=ax.transAxes, ha="center", va="top", **style)
    ax.text(0.5, 0.02, bottom, transform=ax.transAxes, ha="center", va="bottom", **style)
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def _summary_lines(summary: Mapping[str, Any], names: Mapping[str, str]) -> List[str]:
    lines = []
    model = summary.get("model")
    if model:
        lines.append(f"Model {model['id']} {model['version']}")
    for key, ml in summary.get("volumes_ml", {}).items():
        lines.append(f"{names.get(key, key)}: {ml:.1f} mL")
    psa = summary.get("psa")
    if psa:
        density = psa.get("psa_density")
        lines.append(f"PSA {psa['psa_ng_ml']:g} ng/mL, density {density:.3f} ng/mL/cc" if density else "PSA density: -")
        if psa.get("tz_psa_density"):
            lines.append(f"TZ PSA density {psa['tz_psa_density']:.3f} ng/mL/cc")
    if summary.get("confidence") is not None:
        lines.append(f"Confidence {summary['confidence']:.2f}")
    return lines


def write_report_png(
    image: sitk.Image,
    labelmap: sitk.Image,
    labels: Sequence,
    path: PathLike,
    summary: Optional[Mapping[str, Any]] = None,
    title: str = "",
    dpi: int = 100,
) -> Path:
    """Draw the result picture of ``labelmap`` (input grid) over ``image`` and save it as PNG at ``path``.

    ``labels``: the model's ``LabelEntry`` list (values, names, colours). ``summary``: the result record
    (``volumes_ml``, optional ``psa``, ``confidence`` and ``flags`` as dicts with ``message``).
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    summary = summary or {}
    a, lab, spacing_xyz, direction = _lps_arrays(image, labelmap)
    spacing_zyx = spacing_xyz[::-1]
    lo, hi = _window(a)
    picture = np.clip((a - lo) / (hi - lo), 0, 1)
    colors = {entry.value: tuple(c / 255 for c in entry.structure.color) for entry in labels}
    names = {entry.structure.name: entry.structure.display_name for entry in labels}
    mask = np.isin(lab, list(colors))
    bz, by, bx = _box(mask, spacing_zyx)
    slices_with_gland = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
    if slices_with_gland.size:
        axial = np.unique(np.linspace(slices_with_gland[0], slices_with_gland[-1], AXIAL_SLICES).round().astype(int))
        zc, yc, xc = (int(round(c)) for c in np.argwhere(mask).mean(axis=0))
    else:
        axial = np.unique(np.linspace(0, a.shape[0] - 1, AXIAL_SLICES).round().astype(int))
        zc, yc, xc = (n // 2 for n in a.shape)
    # screen directions in LPS: columns go +x, rows go +y (axial); reformats show superior up
    ex, ey, ez = direction[:, 0], direction[:, 1], direction[:, 2]
    axial_letters = (
        orientation_letters(-ex),
        orientation_letters(ex),
        orientation_letters(-ey),
        orientation_letters(ey),
    )
    sag_letters = (orientation_letters(-ey), orientation_letters(ey), orientation_letters(ez), orientation_letters(-ez))
    cor_letters = (orientation_letters(-ex), orientation_letters(ex), orientation_letters(ez), orientation_letters(-ez))

    n_top = max(len(axial), 5)
    flags = summary.get("flags") or []
    text = ["Flags:"] if flags else ["No quality flags."]
    for f in flags:
        message = f["message"] if isinstance(f, Mapping) else str(f)
        text += textwrap.wrap(message, width=int(26 * n_top), initial_indent="- ", subsequent_indent="  ")
    text_height = 0.1 + 0.075 * len(text)
    fig = plt.figure(figsize=(2.3 * n_top, 4.8 + 1.6 * text_height), dpi=dpi, facecolor="white")
    grid = fig.add_gridspec(3, n_top, height_ratios=[1, 1, text_height], hspace=0.25, wspace=0.04)
    for i, z in enumerate(axial):
        ax = fig.add_subplot(grid[0, i])
        aspect = spacing_zyx[1] / spacing_zyx[2]
        _draw(ax, picture[z, by, bx], lab[z, by, bx], colors, aspect, axial_letters, f"axial {z + 1}/{a.shape[0]}")
    ax = fig.add_subplot(grid[1, 0:2])
    sag = picture[bz, by, xc][::-1]
    _draw(ax, sag, lab[bz, by, xc][::-1], colors, spacing_zyx[0] / spacing_zyx[1], sag_letters, "sagittal")
    ax = fig.add_subplot(grid[1, 2:4])
    cor = picture[bz, yc, bx][::-1]
    _draw(ax, cor, lab[bz, yc, bx][::-1], colors, spacing_zyx[0] / spacing_zyx[2], cor_letters, "coronal")
    ax = fig.add_subplot(grid[1, 4:])
    ax.set_axis_off()
    lines = ([title] if title else []) + _summary_lines(summary, names)
    ax.text(0.05, 0.9, "\n".join(lines), ha="left", va="top", fontsize=9, transform=ax.transAxes)
    ax = fig.add_subplot(grid[2, :])
    ax.set_axis_off()
    ax.text(0.0, 1.0, "\n".join(text), ha="left", va="top", fontsize=8.5, transform=ax.transAxes)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.stem}.partial.png")
    try:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
        os.replace(tmp, p)
    finally:
        plt.close(fig)
        if tmp.exists():
            tmp.unlink()
    return p


_SORT_SCRIPT = """
function sortBy(col, numeric) {
  const body = document.querySelector('tbody');
  const rows = Array.from(body.rows);
  const th = document.querySelectorAll('th')[col];
  const asc = th.dataset.order !== 'asc';
  document.querySelectorAll('th').forEach(h => h.dataset.order = '');
  th.dataset.order = asc ? 'asc' : 'desc';
  const key = r => { const v = r.cells[col].dataset.value ?? r.cells[col].textContent;
                     return numeric ? (v === '' ? Infinity : parseFloat(v)) : v.toLowerCase(); };
  rows.sort((a, b) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0) * (asc ? 1 : -1));
  rows.forEach(r => body.appendChild(r));
}
"""


def _cell(value: Any, numeric: bool = False, text: Optional[str] = None) -> str:
    shown = html.escape(text if text is not None else ("" if value is None else str(value)))
    data = "" if value is None else html.escape(str(value))
    return f'<td data-value="{data}">{shown}</td>' if numeric else f"<td>{shown}</td>"


def write_index_html(rows: Sequence[Mapping[str, Any]], path: PathLike, title: str = "UNetSegment results") -> Path:
    """One HTML page with a row per case; rows start sorted by confidence, lowest first.

    Each row: ``case``, ``status``, ``report`` (PNG path, shown as a thumbnail linking to it),
    ``volumes_ml`` (dict), ``psa_density``, ``confidence``, ``flags`` (sentences), ``error``.
    Paths are written relative to the page's folder.
    """
    p = Path(path)
    structures: List[str] = []
    for r in rows:
        for k in r.get("volumes_ml") or {}:
            if k not in structures:
                structures.append(k)
    head = ["Case", "Picture", *[f"{s} (mL)" for s in structures], "PSA density", "Confidence", "Flags", "Status"]
    numeric = [False, False, *[True] * len(structures), True, True, True, False]
    ths = "".join(
        f'<th onclick="sortBy({i}, {"true" if n else "false"})">{html.escape(h)}</th>'
        for i, (h, n) in enumerate(zip(head, numeric))
    )
    ordered = sorted(rows, key=lambda r: (r.get("confidence") is None, r.get("confidence") or 0.0))
    body = []
    for r in ordered:
        cells = [_cell(r.get("case"))]
        report = r.get("report")
        if report:
            rel = html.escape(os.path.relpath(Path(report), p.parent).replace(os.sep, "/"))
            cells.append(
                f'<td><a href="{rel}"><img src="{rel}" alt="{html.escape(str(r.get("case")))}" loading="lazy"></a></td>'
            )
        else:
            cells.append("<td></td>")
        vols = r.get("volumes_ml") or {}
        cells += [_cell(round(vols[s], 1) if s in vols else None, True) for s in structures]
        cells.append(_cell(r.get("psa_density"), True))
        conf = r.get("confidence")
        cells.append(_cell(conf, True, f"{conf:.2f}" if conf is not None else ""))
        flags = r.get("flags") or []
        items = "".join(f"<li>{html.escape(f['message'] if isinstance(f, Mapping) else str(f))}</li>" for f in flags)
        error = r.get("error")
        cells.append(f'<td data-value="{len(flags)}"><ul>{items}</ul>{html.escape(error) if error else ""}</td>')
        cells.append(_cell(r.get("status", "ok")))
        cls = ' class="flagged"' if flags or r.get("status", "ok") != "ok" else ""
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1em; }}
table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #ccc; padding: 4px 6px; vertical-align: top; text-align: left; }}
th {{ cursor: pointer; background: #eee; }}
th[data-order=asc]::after {{ content: " \\25B2"; }} th[data-order=desc]::after {{ content: " \\25BC"; }}
img {{ width: 360px; }}
tr.flagged td:first-child {{ border-left: 4px solid #d9822b; }}
ul {{ margin: 0; padding-left: 1.1em; max-width: 28em; }}
</style><script>{_SORT_SCRIPT}</script></head>
<body><h1>{html.escape(title)}</h1>
<p>{len(rows)} case(s), lowest confidence first; click a column to sort. Flags never block a result; they say
what to look at.</p>
<table><thead><tr>{ths}</tr></thead><tbody>
{chr(10).join(body)}
</tbody></table></body></html>
"""
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.partial")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, p)
    return p
