"""Rendered views of sampled preimages: a text table for terminals and a self-contained HTML
page (query position highlighted; each sample's matching position marked; in/out of the
ε-preimage coloured), the way the paper presents InversionView results."""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence

from msae_plugin.inversionview.preimage import DEFAULT_EPSILON, ScoredCandidate

Decode = Callable[[list[int]], str]


def _where(query_position: int | None) -> str:
    """How the query's position is reported: a raw activation (``None``) has none, and
    printing a sentinel such as -1 would read as "the last position"."""
    return "no position: raw activation" if query_position is None else (
        f"position {query_position}")


def render_table(
    scored: Sequence[ScoredCandidate], decode: Decode, query_text: str,
    query_position: int | None, epsilon: float = DEFAULT_EPSILON, limit: int = 20,
) -> str:
    """A text table of candidates (closest first), the matched position in brackets.
    ``query_position`` is ``None`` for a raw activation that came without an input."""
    lines = [
        f"query: {query_text}  ({_where(query_position)})",
        f"{sum(c.in_preimage for c in scored)}/{len(scored)} samples inside the "
        f"ε={epsilon} preimage",
        f"{'distance':>9}  in?  sample",
    ]
    for c in scored[:limit]:
        toks = [decode([t]) for t in c.tokens]
        if 0 <= c.position < len(toks):
            toks[c.position] = f"[{toks[c.position]}]"
        lines.append(f"{c.distance:9.4f}  {'yes' if c.in_preimage else ' no'}  {''.join(toks)}")
    return "\n".join(lines)


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
.tok { font-family: ui-monospace, monospace; padding: 1px 3px; margin: 0 1px; border-radius: 3px;
       background: #f1f1f1; }
.query { background: #ffd54f; font-weight: bold; outline: 2px solid #e6a100; }
.match { outline: 2px solid #1e88e5; }
table { border-collapse: collapse; } td, th { padding: 3px 10px; text-align: left; }
tr.in td.d { color: #1b5e20; } tr.out td.d { color: #b71c1c; }
tr.in { background: #f1f8e9; } tr.out { background: #fff; }
.meta { color: #555; }
"""


def _colour(c: float) -> str:
    """Blue for tokens the query makes more likely, red for less likely (alpha = |c|)."""
    rgb = "30, 100, 230" if c >= 0 else "220, 50, 50"
    return f' style="background: rgba({rgb}, {min(1.0, abs(c)):.2f})"'


def _tokens_html(
    tokens: Sequence[str], mark: int, css: str, contrast: Sequence[float] | None = None
) -> str:
    return "".join(
        f'<span class="tok {css if i == mark else ""}"'
        f'{_colour(contrast[i]) if contrast is not None and i < len(contrast) else ""}>'
        f"{html.escape(t)}</span>"
        for i, t in enumerate(tokens)
    )


def render_html(
    scored: Sequence[ScoredCandidate],
    decode: Decode,
    query_tokens: Sequence[int],
    query_position: int | None,
    site: str,
    epsilon: float = DEFAULT_EPSILON,
    title: str = "InversionView",
    limit: int = 100,
    contrast: Sequence[Sequence[float]] | None = None,
) -> str:
    """One self-contained HTML page: the query input with its position highlighted, then the
    samples (closest first) with distance, in/out of the ε-preimage and the position whose
    activation matched outlined. ``query_position`` is ``None`` for a raw activation (nothing
    is highlighted then)."""
    n_in = sum(c.in_preimage for c in scored)
    mark = -1 if query_position is None else query_position
    q = (_tokens_html([decode([t]) for t in query_tokens], mark, "query") if query_tokens
         else "<em>a raw activation (no input)</em>")
    rows = []
    for i, c in enumerate(scored[:limit]):
        toks = _tokens_html([decode([t]) for t in c.tokens], c.position, "match",
                            None if contrast is None else contrast[i])
        cls = "in" if c.in_preimage else "out"
        rows.append(
            f'<tr class="{cls}"><td class="d">{c.distance:.4f}</td>'
            f"<td>{'yes' if c.in_preimage else 'no'}</td><td>{c.position}</td><td>{toks}</td></tr>"
        )
    legend = ("; token colour: p(token | query) − p(token | BOS activation), blue = raised by "
              "the query, red = lowered") if contrast is not None else ""
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_CSS}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Query: {q}</p>
<p class="meta">site <code>{html.escape(site)}</code>, {_where(query_position)};
{n_in}/{len(scored)} samples inside the ε = {epsilon} preimage (normalised distance
‖a − q‖ / ‖q‖, minimised over each sample's positions; the matching position is outlined{legend}).</p>
<table><tr><th>distance</th><th>in ε-preimage</th><th>pos</th><th>sample</th></tr>
{chr(10).join(rows)}
</table></body></html>
"""
