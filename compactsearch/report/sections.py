"""The report's page: its sections, their figures and tables, and the summary of the numbers drawn.

`Page` turns what `compactsearch.report.collect.collect` computed into `compactsearch.report.html` sections, in
order: summary, head labels, density and recall heatmaps, pattern efficiency, attention maps around the middle
query tile, the requested heads' fronts, attention on text, tiling waste, and a note on how the page was made.
The page names buckets by the profile's numbers only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from compactsearch.config import Config, run_density
from compactsearch.masks import tile_mask
from compactsearch.patterns import Pattern
from compactsearch.profile.stats import LABELS
from compactsearch.profile.store import Profile
from compactsearch.report import figures as F
from compactsearch.report import texts as T
from compactsearch.report.collect import Collected, Progress
from compactsearch.report.html import FigureRef, Section, Table
from compactsearch.report.maps import downsample, sink_cells, window_rects
from compactsearch.report.select import MAX_CELLS, Selection
from compactsearch.search import ExactScorer, HeadResult, SearchSettings
from compactsearch.search.fidelity import HeadFidelity
from compactsearch.tile_choice import reference_panel

__all__ = ["Page", "ROWS_PER_FIGURE"]

ROWS_PER_FIGURE = 8

def _steps(r) -> str:
    return f"steps {r[0]}-{r[1] - 1}" if r[1] - r[0] > 1 else f"step {r[0]}"


class Page:
    """Turns the collected numbers into sections, figures and the summary."""

    def __init__(self, profile: Profile, config: Config | None, config_path: Path | None, cfg_map: list[int],
                 sel: Selection, data: Collected, settings: SearchSettings, floor: float | None,
                 query: tuple[int, int, int]):
        self.profile, self.config, self.config_path, self.cfg_map = profile, config, config_path, cfg_map
        self.sel, self.data, self.settings, self.floor, self.query = sel, data, settings, floor, query
        self.layout = profile.layout()
        self.figures: list[FigureRef] = []
        self.notes: list[str] = []
        self.summary: dict = {}
        st = data.stats
        self.label = {(int(r.bucket), int(r.layer), int(r.head)): str(r.label) for r in st.itertuples()}
        self.text_mass = {(int(r.bucket), int(r.layer), int(r.head)): float(r.text_mass) for r in st.itertuples()}

    # ---------------------------------------------------------------------------------------------- helpers
    def _fig(self, fig, filename: str, caption: str, alt: str) -> FigureRef:
        ref = FigureRef(F.png(fig), filename, caption, alt)
        self.figures.append(ref)
        return ref

    def _bucket_title(self, b: int) -> str:
        return f"bucket {b} ({_steps(self.profile.buckets[b])})"

    def _cfg_title(self, ci: int) -> str:
        return f"bucket {self.cfg_map[ci]} ({_steps(self.config.bucket_steps(ci))})"

    def meta(self) -> list[str]:
        p, lay = self.profile, self.layout
        lines = [f"Profile: {p.root or 'in memory'} (model {p.model.get('id', 'unknown')}, "
                 f"adapter {p.model.get('adapter', 'unknown')}; {len(p.prompts)} prompts; content hash "
                 f"{p.content_hash[:12] if p.hashes else 'n/a'})",
                 f"Geometry {p.geometry.describe()}; {p.num_layers} layers x {p.num_heads} heads; {lay.describe()}; "
                 f"{p.num_buckets} step buckets: " + ", ".join(_steps(b) for b in p.buckets)]
        if self.config is not None:
            c = self.config
            prov = c.provenance or {}
            lines.append(f"Config: {self.config_path or 'given'} (kind {prov.get('kind', 'unknown')}"
                         + (f", made {prov['date']}" if prov.get("date") else "")
                         + f"); {c.num_steps} steps, dense warm-up {c.dense_warmup}, {len(c.buckets)} sparse "
                         "buckets")
        else:
            lines.append("No config given: the report shows the profile only (labels, maps, text mass, waste).")
        return lines

    # -------------------------------------------------------------------------------------------- sections
    def sections(self, head_list: list[tuple[int, int]], progress: Progress | None) -> list[Section]:
        self.head_list = head_list
        steps = [self._summary, self._labels, self._heatmaps, self._efficiency, self._maps, self._fronts, self._text,
                 self._waste, self._about]
        out = []
        for i, fn in enumerate(steps):
            if progress:
                progress("drawing figures", i, len(steps))
            s = fn()
            if s is not None:
                out.append(s)
        if progress:
            progress("drawing figures", len(steps), len(steps))
        return out

    def _summary(self) -> Section:
        p, d = self.profile, self.data
        s = Section("summary", "Summary")
        counts = {}
        for b in range(p.num_buckets):
            labels = [self.label[(b, l, h)] for l in range(p.num_layers) for h in range(p.num_heads)]
            counts[f"b{b}"] = {x: labels.count(x) for x in LABELS}
        text = np.array(list(self.text_mass.values()))
        self.summary.update(layers=p.num_layers, heads=p.num_heads, buckets=[list(b) for b in p.buckets],
                            label_counts=counts, text_mass_mean=round(float(text.mean()), 5))
        rows = [["geometry", p.geometry.describe(), ""], ["tile layout", self.layout.describe(), ""],
                ["heads", f"{p.num_layers} layers x {p.num_heads} heads x {p.num_buckets} buckets", ""]]
        for b in range(p.num_buckets):
            rows.append([f"labels, {self._bucket_title(b)}",
                         ", ".join(f"{k} {v}" for k, v in counts[f"b{b}"].items()), ""])
        rows.append(["mean attention on text tokens", f"{100 * float(text.mean()):.2f}%", ""])
        if self.config is None:
            s.paragraphs.append("Without a config only the profile is summarised.")
            s.items.append(Table(["quantity", "this profile", ""], rows))
            return s
        c = self.config
        per_bucket = d.density.mean(axis=(1, 2))
        run = run_density([float(x) for x in per_bucket], c.plan())
        below = int((d.recall < self.floor - 1e-12).sum()) if self.floor is not None else 0
        any_sparse = d.recall.size > 0  # a config with no bucket runs every step dense
        mine = {
            "density": run["density"],
            "density_sparse_steps": run["density_sparse_steps"],
            "bucket_density": [round(float(x), 5) for x in per_bucket],
            "est_attention_speedup": run["est_attention_speedup"],
            "recall_mean": round(float(d.recall.mean()), 5) if any_sparse else 1.0,
            "recall_min": round(float(d.recall.min()), 5) if any_sparse else 1.0,
            "recall_min_block": round(float(d.recall_min.min()), 5) if any_sparse else 1.0,
            "heads_below_floor": below,
            "tiling_waste_mean": round(float(d.waste.mean()), 5) if any_sparse else 0.0,
        }
        if any_sparse and not np.isnan(d.fidelity).any():
            mine["fidelity_mean"] = round(float(d.fidelity.mean()), 5)
        if any_sparse:
            mine["oracle_recall_mean"] = round(float(d.oracle.mean()), 5)
            mine["pattern_efficiency"] = round(float(d.recall.mean() / max(d.oracle.mean(), 1e-300)), 5)
        self.summary["config"] = mine
        rec = c.summary or {}
        names = [("density", "block density over the whole run (dense warm-up steps at 1)"),
                 ("density_sparse_steps", "block density over the sparse steps"),
                 ("est_attention_speedup", "ideal attention speed-up (1 / whole-run density)"),
                 ("recall_mean", "recall, mean over heads"), ("recall_min", "recall, worst head"),
                 ("recall_min_block", "recall, worst query block"),
                 ("heads_below_floor", f"heads below the recall floor {self.floor:g}"),
                 ("tiling_waste_mean", "tiling waste, mean over heads"),
                 ("fidelity_mean", "output fidelity, mean over heads (1 - relative error; needs value statistics)"),
                 ("oracle_recall_mean", "oracle recall, mean over heads (top blocks by mass, same densities)"),
                 ("pattern_efficiency", "pattern efficiency (mean recall / mean oracle recall)")]
        header = ["quantity", "this profile (recomputed)", "recorded in the config"]
        table = [[label, mine.get(k, "-"), rec.get(k, "")] for k, label in names]
        table.append(["search objective", "", (c.search or {}).get("objective", rec.get("objective", "recall"))])
        s.paragraphs.append(
            "Density counts kernel blocks computed over dense blocks, text blocks included; recall is the share of "
            "each head's attention mass (mean over query tokens) the chosen pattern keeps, computed here exactly on "
            "this profile's mean block mass with the kernel's block mask. The config's own numbers come from the "
            "search (calibration prompts only when it held prompts out).")
        s.items.append(Table(header, table + [[a, b, c] for a, b, c in rows], caption="Whole model"))
        if not any_sparse:
            s.paragraphs.append("The config has no step bucket: every step runs dense.")
            return s
        series = []
        for ci in range(len(c.buckets)):
            series.append((f"bucket {self.cfg_map[ci]}", d.density[ci].mean(1), d.recall[ci].mean(1),
                           d.recall[ci].min(1)))
        s.items.append(self._fig(F.layer_summary(series, self.floor), "01-summary-layers.png",
                                 "Per layer: mean block density and mean / worst-head recall of the chosen patterns, "
                                 "per bucket.", "density and recall per layer"))
        return s

    def _labels(self) -> Section:
        p = self.profile
        s = Section("labels", "Head labels", [T.LABELS])
        if self.data.stats_recomputed:
            s.paragraphs.append("The profile's statistics table was missing or incomplete: labels were recomputed "
                                "from the block mass.")
        code = {x: i for i, x in enumerate(LABELS)}
        grids, counts = [], []
        for b in range(p.num_buckets):
            g = np.array([[code[self.label[(b, l, h)]] for h in range(p.num_heads)] for l in range(p.num_layers)])
            grids.append((self._bucket_title(b), g))
            counts.append((self._bucket_title(b), [int((g == i).sum()) for i in range(len(LABELS))]))
        s.items.append(self._fig(F.label_grid(grids, LABELS), "02-labels.png",
                                 "Label of every (layer, head), one grid per step bucket.", "head label grid"))
        s.items.append(self._fig(F.label_counts(counts, LABELS), "03-label-counts.png",
                                 "Number of heads per label and step bucket.", "head label counts"))
        s.items.append(Table(["bucket", *LABELS], [[t, *c] for t, c in counts], caption="Heads per label"))
        return s

    def _heatmaps(self) -> Section:
        s = Section("density-recall", "Density and recall per bucket")
        if self.config is None:
            s.paragraphs.append("Give --config to see the density and recall of a config's chosen patterns.")
            return s
        d = self.data
        for ci in range(len(self.config.buckets)):
            fig = F.bucket_heatmaps(f"{self._cfg_title(ci)}: chosen patterns per (layer, head)", d.density[ci],
                                    d.recall[ci], self.floor)
            s.items.append(self._fig(fig, f"04-heatmaps-b{ci}.png",
                                     f"Block density and recall of every head's chosen pattern, {self._cfg_title(ci)}.",
                                     f"density and recall heatmaps, bucket {self.cfg_map[ci]}"))
            worst = np.argsort(d.recall[ci], axis=None)[:5]
            rows = []
            for idx in worst:
                l, h = np.unravel_index(idx, d.recall[ci].shape)
                hc = self.config.buckets[ci].layers[l].heads[h]
                rows.append([f"L{l}.H{h}", self.label[(self.cfg_map[ci], int(l), int(h))], hc.pattern.describe(),
                             float(d.recall[ci, l, h]), float(d.recall_min[ci, l, h]), float(d.density[ci, l, h])])
            s.items.append(Table(["head", "label", "pattern", "recall", "worst block recall", "density"], rows,
                                 caption=f"Config bucket {ci}: the five heads with the lowest recall"))
        if d.fidelity is not None and d.fidelity.size and not np.isnan(d.fidelity).any():
            s.paragraphs.append(
                "Output fidelity (the profile has value statistics): 1 - the relative squared error of each head's "
                "block-level attention output under its chosen pattern, estimated from the block mass and the key "
                "blocks' mean values (compactsearch/search/fidelity.py). Heads whose dropped keys repeat what they "
                "keep (e.g. the same place in other frames) lose mass but little output: recall can be low while "
                "fidelity stays near 1.")
            grids = [(self._cfg_title(ci), 1.0 - d.fidelity[ci]) for ci in range(len(self.config.buckets))]
            s.items.append(self._fig(F.value_heatmaps(grids, "Estimated output error of the chosen patterns",
                                                      "relative squared output error (1 - fidelity)", ".3f"),
                                     "04-output-error.png",
                                     "Estimated relative output error of every head's chosen pattern, per config "
                                     "bucket (0 = the dense output).", "output error heatmaps"))
        return s

    def _efficiency(self) -> Section | None:
        """Heads by pattern efficiency: how much the pattern language costs on this model."""
        d, c = self.data, self.config
        if c is None or not d.recall.size:
            return None
        s = Section("efficiency", "Pattern efficiency", [T.EFFICIENCY])
        eff = d.recall / np.maximum(d.oracle, 1e-300)
        series = [(self._cfg_title(ci), eff[ci]) for ci in range(len(c.buckets))]
        s.items.append(self._fig(F.efficiency_figure(series), "04b-efficiency.png",
                                 "Every head's pattern efficiency, sorted, per bucket.",
                                 "pattern efficiency of every head, sorted"))
        grids = [(self._cfg_title(ci), 1.0 - eff[ci]) for ci in range(len(c.buckets))]
        s.items.append(self._fig(F.value_heatmaps(grids, "Recall lost to the pattern language",
                                                  "1 - pattern efficiency", ".3f"), "04c-efficiency-heads.png",
                                 "1 - pattern efficiency per (layer, head), per bucket (0: the pattern keeps "
                                 "what the oracle keeps).", "pattern efficiency heatmaps"))
        for ci in range(len(c.buckets)):
            rows = []
            for idx in np.argsort(eff[ci], axis=None)[:10]:
                l, h = np.unravel_index(idx, eff[ci].shape)
                b = self.cfg_map[ci]
                rows.append([f"L{l}.H{h}", self.label[(b, l, h)], c.buckets[ci].layers[l].heads[h].pattern.describe(),
                             float(d.recall[ci, l, h]), float(d.oracle[ci, l, h]), float(eff[ci, l, h]),
                             float(d.density[ci, l, h])])
            s.items.append(Table(["head", "label", "pattern", "recall", "oracle recall", "efficiency", "density"],
                                 rows, caption=f"{self._cfg_title(ci)[0].upper()}{self._cfg_title(ci)[1:]}: the ten "
                                 "least efficient heads"))
        return s

    def _pattern_for(self, b: int, l: int, h: int) -> tuple[Pattern | None, int | None]:
        """The config pattern running at profile bucket ``b`` (dense when the config runs it dense), and its
        config bucket."""
        if self.config is None:
            return None, None
        for ci, pb in enumerate(self.cfg_map):
            if pb == b:
                return self.config.buckets[ci].layers[l].heads[h].pattern, ci
        return Pattern.dense(), None

    def _maps(self) -> Section:
        sel, lay, d = self.sel, self.layout, self.data
        nt, nh, nw = lay.grid_thw
        qt, qh, qw = self.query
        s = Section("maps", "Attention around the middle query tile")
        s.paragraphs.append(
            f"For the query tile in the middle of the video (tile frame {qt}, row {qh}, column {qw} of the "
            f"{nt}x{nh}x{nw} tile grid; red cross), each map shows the share of that tile's attention falling on each "
            "key tile at one temporal tile distance |dt| (both directions summed), on a log colour scale. "
            + ("Magenta boxes outline the chosen pattern's windows at that distance (dashed: the second window; "
               "shifted inward at the border as the kernel does); 'skipped' marks distances the pattern does not "
               "attend; cyan squares marked S are its sink key tiles, kept by every query." if self.config is not None
               else "Give --config to outline a config's windows."))
        dist_idx = list(sel.distances)
        for b in sel.buckets:
            sub = Section(f"maps-b{b}", f"{self._bucket_title(b)[0].upper()}{self._bucket_title(b)[1:]}",
                          collapsed=b != sel.buckets[-1])
            by_layer: dict[int, list[int]] = {}
            for l, h in sel.panels:
                by_layer.setdefault(l, []).append(h)
            for l, hs in by_layer.items():
                for chunk_i in range(0, len(hs), ROWS_PER_FIGURE):
                    chunk = hs[chunk_i: chunk_i + ROWS_PER_FIGURE]
                    panels, rows = [], []
                    factor = (1, 1)
                    for h in chunk:
                        m, text = d.maps[(b, l, h)]
                        ds, factor = downsample(torch.from_numpy(m[dist_idx]), MAX_CELLS)
                        pattern, ci = self._pattern_for(b, l, h)
                        rects = None if pattern is None else [window_rects(pattern, lay.grid_thw, self.query, dd)
                                                              for dd in dist_idx]
                        sinks = None if pattern is None else [sink_cells(pattern, self.query, dd) for dd in dist_idx]
                        label = self.label[(b, l, h)]
                        panels.append(F.MapPanel(f"L{l}.H{h} {label}", ds.numpy(), rects, sinks))
                        row = [f"L{l}.H{h}", label, f"{100 * text:.1f}%"]
                        if self.config is not None:
                            if ci is None:
                                row += ["dense (the config runs this bucket dense)", "", ""]
                            else:
                                row += [pattern.describe(), float(d.recall[ci, l, h]), float(d.density[ci, l, h])]
                        rows.append(row)
                    part = "" if len(hs) <= ROWS_PER_FIGURE else f" (heads {chunk[0]}-{chunk[-1]})"
                    title = (f"{self._bucket_title(b)}, layer {l}{part}: where the middle query tile's attention goes")
                    fig = F.small_multiples(panels, [sel.distances[i] for i in range(len(dist_idx))], (nh, nw),
                                            factor, (qh, qw), title)
                    name = f"05-maps-b{b}-l{l}-{chunk_i // ROWS_PER_FIGURE}.png"
                    sub.items.append(self._fig(fig, name, f"{title}. Rows: heads; columns: temporal tile distance.",
                                               f"attention maps, bucket {b}, layer {l}"))
                    header = ["head", "label", "query tile's mass on text"]
                    if self.config is not None:
                        header += ["pattern", "recall", "density"]
                    sub.items.append(Table(header, rows))
            s.items.append(sub)
        if factor != (1, 1):
            self.notes.append(f"Maps are downsampled: each drawn cell sums {factor[0]}x{factor[1]} tiles.")
        if sel.subsampled:
            self.notes.append("Large profile: the maps show a subsample: " + "; ".join(sel.notes())
                              + ". Tables and heatmaps cover every head.")
        return s

    def _fronts(self) -> Section | None:
        head_list = self.head_list
        if not head_list:
            return None
        s = Section("fronts", "Recall against cost, per requested head")
        nb2 = self.layout.num_blocks ** 2
        st = self.settings
        s.paragraphs.append(
            f"Each head's exact Pareto front recomputed from this profile with the search's settings (recall floor "
            f"{st.recall:g}, {st.trials} trials, {st.max_groups} frame groups, {st.sampler}, seed {st.seed}), the "
            "baselines at the floor (the paper's greedy boundary contraction and the best single cube) and, with a "
            "config, the chosen pattern scored exactly. Density is computed / dense kernel blocks.")
        scorer = ExactScorer(self.layout)
        values = self.profile.has_values
        if values:
            s.paragraphs.append(
                "The profile has value statistics, so a second row scores the same patterns on output fidelity "
                "(1 - the estimated relative output error, compactsearch/search/fidelity.py), what the search "
                "allocates the budget on: a pattern can lose mass and little output where the dropped keys repeat "
                "what the kept ones carry.")
        for l, h in head_list:
            panels, fid_panels, rows = [], [], []
            res_list: list[tuple[int, HeadResult]] = self.data.fronts[(l, h)]
            for b, res in res_list:
                mass = self.profile.mass(b, l)[h]
                hf = HeadFidelity(mass, self.profile.value_factor(b, l)[h], scorer.block_mask) if values else None
                title = self._bucket_title(b)
                # every drawn point once: (name, pattern, recall, worst block recall, density, fidelity or None)
                points = []
                pattern, ci = self._pattern_for(b, l, h)
                if pattern is not None:
                    e = scorer.score(pattern, mass)
                    points.append(("chosen (config)", pattern, e.recall, e.recall_min, e.blocks / nb2))
                points += [(name, fp.pattern, fp.recall, fp.recall_min, fp.blocks / nb2)
                           for name, fp in [("greedy", res.greedy), ("best cube", res.cube)]
                           + [("front", fp) for fp in res.front]]
                points = [(*pt, hf.fidelity(pt[1]) if hf is not None else None) for pt in points]
                for name, pat, rec, rec_min, dens, fid in points:
                    rows.append([title, name, pat.describe(), rec, rec_min, *([fid] if hf is not None else []), dens])
                by_name = {pt[0]: pt for pt in points if pt[0] != "front"}
                front = [pt for pt in points if pt[0] == "front"]
                chosen = by_name.get("chosen (config)")
                for col, panel_list, floor, metric in ((2, panels, st.recall, "recall"),
                                                       (5, fid_panels, None, "fidelity")):
                    if metric == "fidelity" and hf is None:
                        continue
                    greedy, cube = by_name["greedy"], by_name["best cube"]
                    panel_list.append(F.FrontPanel(
                        title, [(pt[4], pt[col]) for pt in front], (greedy[4], greedy[col]), (cube[4], cube[col]),
                        (chosen[4], chosen[col]) if chosen else None, floor, metric))
            fig = F.front_figure(f"L{l}.H{h}", panels, fid_panels)
            what = "recall and output fidelity" if values else "recall"
            s.items.append(self._fig(fig, f"06-front-L{l}.H{h}.png",
                                     f"Head L{l}.H{h}: {what} against block density, per step bucket.",
                                     f"Pareto front of head L{l}.H{h}"))
            header = ["bucket", "point", "pattern", "recall", "worst block recall"]
            header += ["fidelity"] if values else []
            s.items.append(Table(header + ["density"], rows, caption=f"Head L{l}.H{h}: every point drawn"))
        return s

    def _text(self) -> Section:
        p = self.profile
        s = Section("text", "Attention on text tokens")
        g = p.geometry
        if g.text_tokens == 0:
            s.paragraphs.append(f"This geometry has no text tokens in self-attention ({g.describe()}): every head "
                                "puts 0% of its attention on text, so there is nothing to draw.")
            return s
        s.paragraphs.append(f"{g.text_tokens} text tokens sit at the {g.text_position} of the sequence. Text rows "
                            "and columns are always computed (dense), so mass on text is always kept; heads with much "
                            "of it keep a high recall at any pattern.")
        grids = [(self._bucket_title(b), np.array([[self.text_mass[(b, l, h)] for h in range(p.num_heads)]
                                                    for l in range(p.num_layers)])) for b in range(p.num_buckets)]
        fig = F.value_heatmaps(grids, "Share of each head's attention on text tokens",
                               "share of attention mass on text keys")
        s.items.append(self._fig(fig, "07-text-mass.png", "Share of each head's attention on text keys, per bucket.",
                                 "text mass heatmaps"))
        return s

    def _waste(self) -> Section:
        lay = self.layout
        s = Section("waste", "Tiling waste", [T.WASTE])
        scorer = ExactScorer(lay)
        ref = [(name, lay.tiling_waste(tile_mask(pat, lay), scorer.block_mask(pat)))
               for name, pat in zip(("local ~30%", "cross", "time-decaying"), reference_panel(lay))]
        per_head = []
        if self.config is not None:
            per_head = [(f"bucket {self.cfg_map[ci]}", self.data.waste[ci].ravel())
                        for ci in range(len(self.config.buckets))]
        fig = F.waste_figure(ref, per_head, lay.describe())
        s.items.append(self._fig(fig, "08-tiling-waste.png", "Tiling waste of the reference panel and, with a config, "
                                 "of every head's chosen pattern.", "tiling waste"))
        s.items.append(Table(["reference pattern", "tiling waste"], [[n, f"{100 * v:.2f}%"] for n, v in ref]))
        return s

    def _about(self) -> Section:
        return Section("about", "About this report", [T.ABOUT_MADE, T.ABOUT_SUBSAMPLING])
