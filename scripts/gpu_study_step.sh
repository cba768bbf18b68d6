#!/bin/bash
# One step of a CIFAR-10 study on a lent GPU machine whose calls run at most 10 minutes and return at most 8 files of
# 16 MiB (64 MiB in all); its files outlive a call only while it stays warm (docs/reproduce.md, "CIFAR-10 studies").
#
# On the GPU machine (assets staged into $STAGE by ../shared/tools/gpu-stage; $OUT is the folder that comes back):
#   bash scripts/gpu_study_step.sh run STUDY BUDGET_S [PATTERNS] [SESSION_LEFT_S]
#        runner.run_next ('' for all patterns; SESSION_LEFT_S: the lease's budget_left_s, so that no training starts
#        that the session cannot finish); results + report -> $OUT/results_STUDY.tgz
#   bash scripts/gpu_study_step.sh start STUDY SESSION_LEFT_S [PATTERNS]
#        the same in one detached process that outlives the call (while the machine stays warm) with the session's
#        time as its budget, less END_MARGIN_S: it compiles each network once, and no unit waits for the next call
#   bash scripts/gpu_study_step.sh wait STUDY WAIT_S
#        wait up to WAIT_S for that process; its log, and results + report -> $OUT/results_STUDY.tgz, either way;
#        exit 0 while it runs, its exit status once it has ended, 3 if it is gone without one (killed). A training
#        that finished on this machine (not one imported) ends the wait at once and comes back with it, SHIP_PIECES
#        export pieces a call (default 3: 45 MiB), until all are out: weights leave the machine as soon as they exist
#   bash scripts/gpu_study_step.sh export STUDY UNIT FIRST LAST    # a trained unit's release -> $OUT in 15 MiB pieces
#   bash scripts/gpu_study_step.sh import STUDY UNIT FOLDER        # a trained unit brought back earlier, into the cache
# Here (the machine the pieces came back to):
#   bash scripts/gpu_study_step.sh receive STUDY UNIT CACHE SHA256 PIECE...  # join, check, unpack into CACHE/STUDY/train
#   bash scripts/gpu_study_step.sh results STUDY TGZ               # unpack returned JSONs (trainings/ too) + unit PNGs
#                                                                  # into docs/results/STUDY
# STUDY: cifar10_guidance or cifar10_cfg_aligned.
set -euo pipefail
STAGE=${STAGE:-/root/stage} RESULTS=${RESULTS:-/root/results} CACHE=${CACHE:-$HOME/.cache/diffguide-studies}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1  # the worker's log shows each unit as it ends
EXPORT=${EXPORT:-/root/export} SHIP_PIECES=${SHIP_PIECES:-3}
step=${1:?"step: run, start, wait, export, import, receive or results"}; study=${2:?"STUDY: cifar10_guidance or cifar10_cfg_aligned"}
case "$study" in cifar10_guidance|cifar10_cfg_aligned) ;; *) echo "STUDY: unknown study '$study'" >&2; exit 2 ;; esac
END_MARGIN_S=${END_MARGIN_S:-90}  # start: the last wait call's tarball and return, before the session's time ends
study_units() {  # BUDGET_S PATTERNS SESSION_LEFT_S: runner.run_next from the committed JSONs (finished units skipped)
  mkdir -p "$RESULTS/$study"
  for f in "docs/results/$study"/*.json; do
    [ ! -e "$f" ] || [ -e "$RESULTS/$study/$(basename "$f")" ] || cp "$f" "$RESULTS/$study/"
  done
  python "scripts/${study}_study.py" --shared "$STAGE" --model "$STAGE/cifar10-cond-17m-v0" \
    --data "$STAGE/cifar10-jpeg-q75.tar.gz" --inception "$STAGE/inception-2015-12-05-fid-features.pt" \
    --classifiers "$STAGE/classifiers" --cache "$CACHE" --results "$RESULTS/$study" --report "$RESULTS/$study.md" \
    --budget-s "$1" ${2:+--only "$2"} ${3:+--session-left-s "$3"}
}
results_out() {  # the finished units come back even when a later one stopped the command (e.g. out of memory)
  tar czf "$OUT/results_$study.tgz" -C "$RESULTS" "$study" $(cd "$RESULTS" && ls "$study.md" 2>/dev/null || true)
}
pack() {  # UNIT: the whole finished unit (its files differ: train, train-classifier, calibrate) but the resume
  # checkpoint, as one tar in 15 MiB pieces with its sha256, once
  local unit=$1 tar=$EXPORT/$study.$1.tar; mkdir -p "$EXPORT"; [ ! -f "$tar.sha256" ] || return 0
  [ -f "$CACHE/$study/train/$unit/done.json" ] || { echo "export: $unit is not finished here" >&2; return 1; }
  (cd "$CACHE/$study/train" && tar cf "$tar" --exclude "$unit/checkpoint.pt" "$unit")
  (cd "$EXPORT" && sha256sum "$(basename "$tar")" > "$(basename "$tar").sha256" \
    && split -d -b "${PIECE_SIZE:-15M}" "$(basename "$tar")" "$(basename "$tar").part")
}
unshipped() {  # the finished trainings made on this machine whose pieces have not all come back
  local done unit
  for done in "$CACHE/$study/train"/*/done.json; do
    [ -e "$done" ] || continue; unit=$(basename "$(dirname "$done")")
    [ -f "$EXPORT/$study.$unit.shipped" ] || echo "$unit"
  done
}
ship() {  # up to SHIP_PIECES pieces of the unshipped trainings -> $OUT, with their sha256; the last marks it shipped
  local budget=$SHIP_PIECES unit piece pieces
  for unit in $(unshipped); do
    [ "$budget" -gt 0 ] || break; pack "$unit"; cp "$EXPORT/$study.$unit.tar.sha256" "$OUT/"
    pieces=("$EXPORT/$study.$unit.tar".part??)
    for piece in "${pieces[@]}"; do
      [ ! -f "$piece.out" ] || continue
      [ "$budget" -gt 0 ] || continue 2  # pieces left for the next call
      cp "$piece" "$OUT/"; touch "$piece.out"; budget=$((budget - 1))
      echo "shipped: $(basename "$piece") of ${#pieces[@]}"
    done
    touch "$EXPORT/$study.$unit.shipped"; echo "shipped: $unit complete (receive it here)"
  done
}
alive() { [ -f "$RESULTS/$study.pid" ] && kill -0 "$(cat "$RESULTS/$study.pid")" 2>/dev/null; }
case "$step" in
  run)
    study_units "${3:?BUDGET_S}" "${4:-}" "${5:-}" || status=$?
    results_out; exit "${status:-0}" ;;
  start)
    left=${3:?SESSION_LEFT_S}; ! alive || { echo "start: a $study worker is running (pid $(cat "$RESULTS/$study.pid"))" >&2; exit 1; }
    [ "$left" -gt "$END_MARGIN_S" ] || { echo "start: SESSION_LEFT_S $left leaves nothing after END_MARGIN_S" >&2; exit 2; }
    mkdir -p "$RESULTS"; rm -f "$RESULTS/$study.rc"
    setsid nohup bash "$0" _worker "$study" "$((left - END_MARGIN_S))" "${4:-}" "$left" \
      > "$RESULTS/$study.log" 2>&1 < /dev/null &
    echo $! > "$RESULTS/$study.pid"; sleep 2
    alive || [ -f "$RESULTS/$study.rc" ] || { echo "start: the worker is gone at once; its log:" >&2; tail "$RESULTS/$study.log" >&2; exit 1; }
    echo "started: pid $(cat "$RESULTS/$study.pid"), log $RESULTS/$study.log" ;;
  _worker)
    study_units "$3" "$4" "$5" && echo 0 > "$RESULTS/$study.rc" || echo $? > "$RESULTS/$study.rc" ;;
  wait)
    [ -f "$RESULTS/$study.pid" ] || { echo "wait: no $study worker was started on this machine" >&2; exit 2; }
    end=$((SECONDS + ${3:?WAIT_S}))
    while alive && [ "$SECONDS" -lt "$end" ] && [ -z "$(unshipped)" ]; do sleep "${POLL_S:-5}"; done
    grep -v "^  \(waiting\|ready\|blocked\)" "$RESULTS/$study.log" | tail -40 || true; results_out; ship
    if alive; then echo "worker: running"
    elif [ -f "$RESULTS/$study.rc" ]; then echo "worker: ended, exit $(cat "$RESULTS/$study.rc")"; exit "$(cat "$RESULTS/$study.rc")"
    else echo "worker: gone without an exit status (killed with its call?): use run" >&2; exit 3; fi ;;
  export)
    unit=${3:?UNIT}; first=${4:?FIRST}; last=${5:?LAST}; pack "$unit"; cp "$EXPORT/$study.$unit.tar.sha256" "$OUT/"
    for i in $(seq -f %02g "$first" "$last"); do
      [ ! -f "$EXPORT/$study.$unit.tar.part$i" ] || cp "$EXPORT/$study.$unit.tar.part$i" "$OUT/"
    done
    ls "$EXPORT" ;;
  import)  # brought back earlier: not shipped again
    unit=${3:?UNIT}; mkdir -p "$CACHE/$study/train" "$EXPORT" && cp -r "${4:?FOLDER}" "$CACHE/$study/train/$unit" \
      && touch "$EXPORT/$study.$unit.shipped" ;;
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
    for f in "$tmp/$study"/*.json "$tmp/$study"/*.png "$tmp/$study"/trainings/*.json; do
      case "$(basename "$f")" in figure_*|'*.json'|'*.png') continue ;; esac
      rel=${f#"$tmp/$study/"}; mkdir -p "$(dirname "docs/results/$study/$rel")"
      [ -e "docs/results/$study/$rel" ] || cp "$f" "docs/results/$study/$rel"
    done
    rm -r "$tmp"; ls "docs/results/$study" | wc -l ;;
  *) echo "step: expected run, start, wait, export, import, receive or results, got '$step'" >&2; exit 2 ;;
esac
