#!/bin/bash
# One step of a CIFAR-10 study on a lent GPU machine whose calls run at most 10 minutes and return at most 8 files of
# 16 MiB (64 MiB in all); its files outlive a call only while it stays warm (docs/reproduce.md, "CIFAR-10 studies").
#
# On the GPU machine (assets staged into $STAGE by ../shared/tools/gpu-stage; $OUT is the folder that comes back):
#   bash scripts/gpu_study_step.sh run STUDY BUDGET_S [PATTERNS] [SESSION_LEFT_S]
#        runner.run_next ('' for all patterns; SESSION_LEFT_S: the lease's budget_left_s, so that no training starts
#        that the session cannot finish); results + report -> $OUT/results_STUDY.tgz
#   bash scripts/gpu_study_step.sh export STUDY UNIT FIRST LAST    # a trained unit's release -> $OUT in 15 MiB pieces
#   bash scripts/gpu_study_step.sh import STUDY UNIT FOLDER        # a trained unit brought back earlier, into the cache
# Here (the machine the pieces came back to):
#   bash scripts/gpu_study_step.sh receive STUDY UNIT CACHE SHA256 PIECE...  # join, check, unpack into CACHE/STUDY/train
#   bash scripts/gpu_study_step.sh results STUDY TGZ               # unpack returned JSONs + unit PNGs into docs/results/STUDY
# STUDY: cifar10_guidance or cifar10_cfg_aligned.
set -euo pipefail
STAGE=${STAGE:-/root/stage} RESULTS=${RESULTS:-/root/results} CACHE=${CACHE:-$HOME/.cache/diffguide-studies}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
step=${1:?"step: run, export, import, receive or results"}; study=${2:?"STUDY: cifar10_guidance or cifar10_cfg_aligned"}
case "$study" in cifar10_guidance|cifar10_cfg_aligned) ;; *) echo "STUDY: unknown study '$study'" >&2; exit 2 ;; esac
case "$step" in
  run)
    mkdir -p "$RESULTS/$study"  # a fresh machine starts from the committed JSONs, so finished units are skipped
    for f in "docs/results/$study"/*.json; do [ -e "$RESULTS/$study/$(basename "$f")" ] || cp "$f" "$RESULTS/$study/"; done
    python "scripts/${study}_study.py" --shared "$STAGE" --model "$STAGE/cifar10-cond-17m-v0" \
      --data "$STAGE/cifar10-jpeg-q75.tar.gz" --inception "$STAGE/inception-2015-12-05-fid-features.pt" \
      --classifiers "$STAGE/classifiers" --cache "$CACHE" --results "$RESULTS/$study" --report "$RESULTS/$study.md" \
      --budget-s "${3:?BUDGET_S}" ${4:+--only "$4"} ${5:+--session-left-s "$5"} || status=$?
    # the finished units come back even when a later one stopped the command (e.g. out of memory)
    tar czf "$OUT/results_$study.tgz" -C "$RESULTS" "$study" $(cd "$RESULTS" && ls "$study.md" 2>/dev/null || true)
    exit "${status:-0}" ;;
  export)
    unit=${3:?UNIT}; first=${4:?FIRST}; last=${5:?LAST}; EXPORT=${EXPORT:-/root/export} pack=$EXPORT/$study.$unit.tar
    mkdir -p "$EXPORT"
    if [ ! -f "$pack.sha256" ]; then
      [ -f "$CACHE/$study/train/$unit/done.json" ] || { echo "export: $unit is not finished here" >&2; exit 1; }
      # the whole finished unit (its files differ: train, train-classifier, calibrate) but the resume checkpoint
      (cd "$CACHE/$study/train" && tar cf "$pack" --exclude "$unit/checkpoint.pt" "$unit")
      (cd "$EXPORT" && sha256sum "$(basename "$pack")" > "$(basename "$pack").sha256" \
        && split -d -b 15M "$(basename "$pack")" "$(basename "$pack").part")
    fi
    cp "$pack.sha256" "$OUT/"
    for i in $(seq -f %02g "$first" "$last"); do [ -f "$pack.part$i" ] && cp "$pack.part$i" "$OUT/"; done
    ls "$EXPORT" ;;
  import)
    unit=${3:?UNIT}; mkdir -p "$CACHE/$study/train" && cp -r "${4:?FOLDER}" "$CACHE/$study/train/$unit" ;;
  receive)
    unit=${3:?UNIT}; cache=${4:?CACHE}; sum=$(realpath "${5:?SHA256}"); shift 5; tmp=$(mktemp -d)
    name="$study.$unit.tar"; cat "$@" > "$tmp/$name"
    (cd "$tmp" && sha256sum -c "$sum" >/dev/null) || { echo "receive: sha256 mismatch for $name" >&2; exit 1; }
    mkdir -p "$cache/$study/train"
    [ ! -e "$cache/$study/train/$unit" ] || { echo "receive: $cache/$study/train/$unit exists; not replaced" >&2; exit 1; }
    tar xf "$tmp/$name" -C "$cache/$study/train" && rm -r "$tmp" && echo "ready: $cache/$study/train/$unit" ;;
  results)
    tmp=$(mktemp -d); tar xzf "${3:?TGZ}" -C "$tmp"; mkdir -p "docs/results/$study"
    # metrics JSONs and the units' own pictures (sample grids, calibration); the report redraws its figure_*.png
    for f in "$tmp/$study"/*.json "$tmp/$study"/*.png; do
      case "$(basename "$f")" in figure_*|'*.json'|'*.png') continue ;; esac
      [ -e "docs/results/$study/$(basename "$f")" ] || cp "$f" "docs/results/$study/"
    done
    rm -r "$tmp"; ls "docs/results/$study" | wc -l ;;
  *) echo "step: expected run, export, import, receive or results, got '$step'" >&2; exit 2 ;;
esac
