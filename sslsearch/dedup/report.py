"""The dedup HTML report: one self-contained page, a row of thumbnails per cluster, keeper marked, paged."""
from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import BadImageError, InvalidArgumentError
from ..files import atomic_write_text
from ..sources import load_image
from .result import ClusterMember, DuplicateCluster

THUMBNAIL_SIZE = 112  # longest side in px; JPEG quality 70 keeps each near 3 KB
MEMBERS_SHOWN = 12  # thumbnails per cluster row; the rest are counted
PAGE_SIZE = 25  # clusters per page

_STYLE = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{background:#1d2330;color:#fff;padding:16px 24px}header h1{margin:0 0 4px;font-size:20px}
header p{margin:2px 0;color:#c9cfdb}main{padding:12px 24px}
nav{display:flex;gap:8px;align-items:center;margin:8px 0 12px}nav button{padding:4px 12px;font-size:14px}
.cluster{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.12);margin:0 0 12px;padding:10px 12px}
.cluster h2{font-size:15px;margin:0 0 8px}.members{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0;width:128px;border:3px solid #d0d4dc;border-radius:6px;padding:4px;background:#fafbfc}
figure.keeper{border-color:#1f9d55;background:#ecf9f1}figure.remove{border-color:#d64545}
figure img,.placeholder{display:block;width:112px;height:112px;object-fit:contain;margin:0 auto;background:#e9ebef}
.placeholder{display:flex;align-items:center;justify-content:center;color:#6b7280;font-size:12px;text-align:center}
figcaption{font-size:11px;word-break:break-all;margin-top:4px}.badge{display:inline-block;font-weight:700;
padding:0 6px;border-radius:4px;color:#fff;font-size:11px}.badge.keep{background:#1f9d55}.badge.remove{background:#d64545}
.badge.index{background:#2563eb}.more{align-self:center;color:#6b7280;font-size:13px}.sim{font-weight:600}
"""

_SCRIPT = """
(function(){
  var sections=document.querySelectorAll('section.cluster');
  var pages=Math.max(1,Math.ceil(sections.length/PAGE_SIZE));var page=0;
  var label=document.getElementById('page-label');
  function show(p){page=Math.min(Math.max(p,0),pages-1);
    for(var i=0;i<sections.length;i++){sections[i].hidden=Math.floor(i/PAGE_SIZE)!==page;}
    label.textContent='page '+(page+1)+' of '+pages;document.body.setAttribute('data-page',String(page+1));}
  document.getElementById('prev').onclick=function(){show(page-1);window.scrollTo(0,0);};
  document.getElementById('next').onclick=function(){show(page+1);window.scrollTo(0,0);};
  document.getElementById('pager').hidden=pages<2;
  var wanted=parseInt((location.hash.match(/page=(\\d+)/)||[])[1]||'1',10)-1;show(wanted);
})();
"""


def thumbnail_data_uri(path: str | os.PathLike[str], size: int = THUMBNAIL_SIZE) -> str | None:
    """A small JPEG of an image as a ``data:`` URI, or None when the file is gone or unreadable."""
    try:
        image = load_image(path).image
    except (BadImageError, OSError):
        return None
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=70)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _member_html(member: ClusterMember, roots: Mapping[str, Path]) -> str:
    root = roots.get(member.source)
    uri = thumbnail_data_uri(root / member.path) if member.path and root is not None else None
    name = html.escape(member.path or f"index id {member.id}")
    if uri is not None:
        picture = f'<img src="{uri}" alt="{name}" loading="lazy">'
    else:
        reason = "image missing" if member.path else "in the index"
        picture = f'<div class="placeholder" data-missing="1">{reason}</div>'
    if member.source == "index":
        role, badge = "keeper" if member.match == "keeper" else "index", '<span class="badge index">INDEX</span>'
    elif member.keep:
        role, badge = "keeper", '<span class="badge keep">KEEP</span>'
    else:
        role, badge = "remove", '<span class="badge remove">remove</span>'
    similarity = "keeper" if member.match == "keeper" else (
        f'<span class="sim">{member.similarity:.3f}</span> {html.escape(member.match)}'
        if member.similarity == member.similarity else html.escape(member.match))
    size = f"{member.width}×{member.height}" if member.width > 0 else "size ?"
    return (f'<figure class="{role}" data-id="{member.id}" title="{name}">{picture}<figcaption>{badge} {similarity}<br>'
            f'{name}<br>{size}{f", {member.size_bytes:,} B" if member.size_bytes >= 0 else ""}</figcaption></figure>')


def _cluster_html(cluster: DuplicateCluster, roots: Mapping[str, Path], max_members: int) -> str:
    shown = cluster.members[:max_members]
    more = len(cluster) - len(shown)
    members = "".join(_member_html(m, roots) for m in shown)
    if more:
        members += f'<div class="more">+{more} more (see clusters.parquet)</div>'
    keeper = html.escape(cluster.keeper.path or f"index id {cluster.keeper.id}")
    return (f'<section class="cluster" id="cluster-{cluster.cluster_id}" data-size="{len(cluster)}">'
            f'<h2>Cluster {cluster.cluster_id} · {len(cluster)} images · keep {keeper}</h2>'
            f'<div class="members">{members}</div></section>')


def write_report(path: str | os.PathLike[str], clusters: Sequence[DuplicateCluster],
                 source_root: str | os.PathLike[str] | Mapping[str, Path], *, max_clusters: int = 500,
                 max_members: int = MEMBERS_SHOWN, page_size: int = PAGE_SIZE,
                 title: str = "Duplicate clusters", subtitle: str = "") -> Path:
    """Write a self-contained HTML page of duplicate clusters (thumbnails inlined as data URIs).

    Clusters are shown largest first, ``page_size`` per page (JavaScript paging; without
    JavaScript every cluster shows). Images that are gone get a placeholder.

    Args:
        path: the .html file to write (atomically).
        clusters: clusters as ``deduplicate`` returns them (keeper first in each).
        source_root: the folder the member paths are relative to, or a mapping from member
            ``source`` ("store", "index") to that folder.
        max_clusters: show at most this many clusters (the rest are counted).
        max_members: thumbnails per cluster.
        page_size: clusters per page.
        title, subtitle: page heading.

    Returns:
        The path written.

    Raises:
        InvalidArgumentError: a limit below 1.
    """
    if min(max_clusters, max_members, page_size) < 1:
        raise InvalidArgumentError(f"report limits must be >= 1, got max_clusters={max_clusters}, "
                                   f"max_members={max_members}, page_size={page_size}")
    roots = ({k: Path(v) for k, v in source_root.items()} if isinstance(source_root, Mapping)
             else {"store": Path(source_root)})
    ordered = sorted(clusters, key=lambda c: (-len(c), c.cluster_id))
    shown = ordered[:max_clusters]
    removed = sum(len(c.removed) for c in clusters)
    note = (f"showing the {len(shown)} largest of {len(clusters)} clusters; all are in clusters.parquet"
            if len(shown) < len(clusters) else f"{len(clusters)} clusters")
    body = "".join(_cluster_html(c, roots, max_members) for c in shown)
    if not shown:
        body = '<p class="empty">No duplicates found.</p>'
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{_STYLE}</style></head>
<body data-clusters="{len(clusters)}" data-shown="{len(shown)}" data-removed="{removed}">
<header><h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p>
<p>{html.escape(note)} · {removed} images to remove · green = keep, red = remove</p></header>
<main><nav id="pager"><button id="prev" type="button">◀ previous</button><span id="page-label"></span>
<button id="next" type="button">next ▶</button></nav>
{body}
</main><script>var PAGE_SIZE={int(page_size)};{_SCRIPT}</script></body></html>
"""
    atomic_write_text(path, page)
    return Path(path)
