#!/usr/bin/env bash
# The whole loop on the demo champion (after `make demo`): serve it, send drifted traffic with feedback,
# monitor (two windows: the policy's hysteresis), retrain on the feedback, gate, promote, and watch the
# running service switch. Prints accuracy on held-out drifted traffic before and after.
# LOOP_DRIFT: vocabulary (default) | length | label-mix | new-intents (labels for those come from an
# annotator's file, `tuneloop feedback import --new-labels`).
set -euo pipefail
PORT=${LOOP_PORT:-3100}
DRIFT=${LOOP_DRIFT:-vocabulary}
SHARE=${LOOP_SHARE:-0.5}   # share of drifted texts in the traffic and in the held-out file
export TUNELOOP_DB_URL=${TUNELOOP_DB_URL:-sqlite:///$(pwd)/build/loop-predictions.db}
mkdir -p build

champion_path() { python - <<'PY'
from tuneloop import registry
from tuneloop.config import load_params
print(registry.champion(load_params().task.name).path)
PY
}
# Accuracy of a model on a labeled file, every row counted: a label the model does not know (a new
# intent) is simply wrong for it, which `tuneloop evaluate` refuses to score.
accuracy() { python - "$1" "$2" <<'PY'
import sys
from tuneloop.model import load_classifier, predict_proba
from tuneloop.tabular import read_labeled
clf, frame = load_classifier(sys.argv[1]), read_labeled(sys.argv[2])
predicted = [clf.labels[i] for i in predict_proba(clf, frame["text"].tolist(), 64).argmax(axis=1)]
print(round(float((frame["label"] == predicted).mean()), 4))
PY
}

# Held-out traffic of the same kind, never sent to the service (other seed).
python - "$DRIFT" "$SHARE" <<'PY'
import sys
from tuneloop.monitor.simulate import drifted_rows
from tuneloop.tabular import write_csv_atomic
write_csv_atomic(drifted_rows(sys.argv[1], 400, float(sys.argv[2]), seed=1234), "build/loop-heldout.csv")
write_csv_atomic(drifted_rows("none", 400, 0.0, seed=1235), "build/loop-reference.csv")
PY
old_model=$(champion_path)
before=$(accuracy "$old_model" build/loop-heldout.csv)
before_ref=$(accuracy "$old_model" build/loop-reference.csv)

tuneloop serve --port "$PORT" > build/loop-serve.log 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 120); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 1; done
old_tag=$(curl -s "http://127.0.0.1:$PORT/metadata" | python -c 'import json,sys; print(json.load(sys.stdin)["model"])')
echo "serving $old_tag on :$PORT; sending $DRIFT traffic with feedback"
tuneloop simulate --url "http://127.0.0.1:$PORT" --rows 1000 --drift "$DRIFT" --share "$SHARE" --feedback 0.5 --seed 7 \
  --new-labels-out build/loop-new-labels.csv
# An annotator's labels for intents the model never saw (POST /feedback refuses those): a new class to learn.
if [ "$(wc -l < build/loop-new-labels.csv)" -gt 1 ]; then
  tuneloop feedback import build/loop-new-labels.csv --new-labels
fi

tuneloop pipeline monitor          # window 1: drift, the policy waits for a second drifted window
tuneloop pipeline monitor          # window 2: retrain -> gate -> promote (in-process: no Prefect server)

new_tag=$old_tag
for _ in $(seq 60); do
  new_tag=$(curl -s -X POST "http://127.0.0.1:$PORT/classify" -H 'content-type: application/json' \
    -d '{"texts": ["I lost my card"]}' | python -c 'import json,sys; print(json.load(sys.stdin)[0]["model"])')
  [ "$new_tag" != "$old_tag" ] && break; sleep 1
done
new_model=$(champion_path)
after=$(accuracy "$new_model" build/loop-heldout.csv)
after_ref=$(accuracy "$new_model" build/loop-reference.csv)
echo
echo "the service answered with $old_tag before and with $new_tag after the loop"
echo "accuracy on held-out $DRIFT traffic (share $SHARE): before $before, after $after"
echo "accuracy on held-out undrifted traffic: before $before_ref, after $after_ref"
echo "look at: reports/gate/gate.md (the gate), monitoring/state/ (verdicts, Evidently HTML reports),"
echo "         tuneloop monitor ui (Evidently UI), tuneloop dashboard (Prefect runs), tuneloop models list"
