#!/usr/bin/env bash
# The whole loop on one recipe, on a CPU: profile -> search -> validate -> evaluate, then a short summary.
#
#   scripts/demo.sh [RECIPE] [--budget B] [--out DIR] [--prompts FILE] [--max-prompts N] [--device D]
#                   [--no-baselines]
#
# RECIPE defaults to recipes/tiny.yaml (the bundled tiny model), --budget to 0.3, --out to demo-out. evaluate
# also runs the best-single-cube and greedy baselines at the same density unless --no-baselines.
# Writes DIR/config.yaml (the searched config), DIR/validation.json, DIR/evaluate.json, DIR/summary.json,
# DIR/dense_vs_sparse.gif (dense | sparse side by side, first evaluation prompt) and DIR/report/report.html
# (`compactsearch report` of the profile and the config). Uses $PYTHON (default:
# .venv/bin/python when it exists, else python3) with compactsearch installed.
#
# Example without the tiny model's weights (3 kernel blocks per call there: 0.33 is its cheapest density):
#   scripts/demo.sh recipes/tiny-random-wan.yaml --budget 0.6 --prompts recipes/prompts/holdout.txt --max-prompts 2
set -euo pipefail

RECIPE=recipes/tiny.yaml
BUDGET=0.3
OUT=demo-out
DEVICE=cpu
PROMPTS=()
MAX_PROMPTS=()
BASELINES=1
if [[ $# -gt 0 && $1 != --* ]]; then RECIPE=$1; shift; fi
while [[ $# -gt 0 ]]; do
  case $1 in
    --budget) BUDGET=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --prompts) PROMPTS=(--prompts "$2"); shift 2 ;;
    --max-prompts) MAX_PROMPTS=(--max-prompts "$2"); shift 2 ;;
    --device) DEVICE=$2; shift 2 ;;
    --no-baselines) BASELINES=0; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "error: unknown argument $1 (see scripts/demo.sh --help)" >&2; exit 2 ;;
  esac
done
if [[ -z ${PYTHON:-} ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if [[ ! -f $RECIPE ]]; then
  echo "error: recipe $RECIPE does not exist" >&2
  exit 2
fi
mkdir -p "$OUT"
CS=("$PYTHON" -m compactsearch)
T0=$(date +%s.%N)
stage() {  # stage NAME OUTFILE CMD... : run, keep stdout (JSON) in OUTFILE, time it
  local name=$1 out=$2; shift 2
  local t=$(date +%s.%N)
  echo "== $name" >&2
  "$@" > "$out"
  echo "$name $(echo "$(date +%s.%N) - $t" | bc)" >> "$OUT/times.txt"
}
: > "$OUT/times.txt"
rm -rf "$OUT/profile" "$OUT/profile.work" "$OUT/config.yaml" "$OUT/config.yaml.optuna.db" "$OUT/videos" "$OUT/report"
stage profile "$OUT/profile.json" "${CS[@]}" profile "$RECIPE" --out "$OUT/profile" --device "$DEVICE" --json
stage search "$OUT/search.json" "${CS[@]}" search "$OUT/profile" --budget "$BUDGET" --out "$OUT/config.yaml" --json
set +e
stage validate "$OUT/validation.json" "${CS[@]}" validate "$OUT/config.yaml" --json
VALID=$?
set -e
BASE=()
if [[ $BASELINES == 1 ]]; then BASE=(--baselines "$OUT/profile"); fi
stage evaluate "$OUT/evaluate.json" "${CS[@]}" evaluate "$RECIPE" --config "$OUT/config.yaml" \
  "${BASE[@]}" --videos "$OUT/videos" --device "$DEVICE" "${PROMPTS[@]}" "${MAX_PROMPTS[@]}" --json
cp "$(ls "$OUT"/videos/0_dense_vs_config.gif)" "$OUT/dense_vs_sparse.gif"
stage report "$OUT/report.json" "${CS[@]}" report "$OUT/profile" --config "$OUT/config.yaml" --out "$OUT/report" --json
TOTAL=$(echo "$(date +%s.%N) - $T0" | bc)

"$PYTHON" - "$OUT" "$TOTAL" "$VALID" <<'PY'
import json, sys
from pathlib import Path

import pandas as pd

out, total, valid = Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
times = dict(line.split() for line in (out / "times.txt").read_text().splitlines())
stats = pd.read_parquet(out / "profile" / "stats.parquet")
heads = stats[stats["prompt"] == -1]
labels = heads["label"].value_counts().to_dict()
search = json.loads((out / "search.json").read_text())["summary"]
ev = json.loads((out / "evaluate.json").read_text())
summary = {
    "seconds": {k: round(float(v), 1) for k, v in times.items()} | {"total": round(total, 1)},
    "head_labels": labels,
    "config": str(out / "config.yaml"),
    "density": search["density"],
    "density_sparse_steps": search["density_sparse_steps"],
    "dense_warmup_steps": search["dense_warmup_steps"],
    "est_attention_speedup": search["est_attention_speedup"],
    "recall_mean": search.get("recall_mean"),
    "validation": "passed" if valid == 0 else f"failed (exit {valid})",
    "evaluation": {c["name"]: {"density": c["density"], "psnr": c["psnr"], "ssim": c["ssim"]} for c in ev["configs"]},
    "gif": str(out / "dense_vs_sparse.gif"),
    "report": str(out / "report" / "report.html"),
}
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(f"\nprofile: {len(heads)} (bucket, layer, head) units, labels " + ", ".join(f"{k} {v}" for k, v in labels.items()))
print(f"search:  density {search['density']:.3f} over the whole run (ideal attention speed-up "
      f"{search['est_attention_speedup']:.2f}x; {search['dense_warmup_steps']} of {search['steps']} steps dense, "
      f"{search['density_sparse_steps']:.3f} over the sparse steps), recall mean {search.get('recall_mean', 1.0):.3f}"
      f" -> {out / 'config.yaml'}")
print(f"validate: {summary['validation']}")
print(f"evaluate ({len(ev['prompts'])} held-out prompts, PSNR / SSIM vs dense; density over the whole run):")
for c in ev["configs"]:
    print(f"  {c['name']:<10} density {c['density']:.3f}  PSNR {c['psnr']:6.2f} dB  SSIM {c['ssim']:.4f}")
print(f"dense | sparse GIF: {summary['gif']}")
print(f"report:  {summary['report']}")
print("time: " + ", ".join(f"{k} {float(v):.0f}s" for k, v in times.items()) + f", total {total:.0f}s")
PY
exit "$VALID"
