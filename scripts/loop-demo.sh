#!/usr/bin/env bash
# The whole loop on the demo champion (after `make demo`): serve it, send drifted traffic with feedback,
# monitor (two windows: the policy's hysteresis), retrain on the feedback, gate, promote, and watch the
# running service switch. Prints accuracy on held-out drifted traffic before and after.
set -euo pipefail
PORT=${LOOP_PORT:-3100}
DRIFT=${LOOP_DRIFT:-vocabulary}
export TUNELOOP_DB_URL=${TUNELOOP_DB_URL:-sqlite:///$(pwd)/build/loop-predictions.db}
mkdir -p build reports/loop

champion_path() { python - <<'PY'
from tuneloop import registry
from tuneloop.config import load_params
print(registry.champion(load_params().task.name).path)
PY
}
accuracy() { python - "$1" <<'PY'
import json, sys
print(json.load(open(sys.argv[1] + "/metrics.json"))["accuracy"])
PY
}

tuneloop data demo --drift "$DRIFT" --rows 400 --seed 1234 --out build/loop-heldout.csv >/dev/null
old_model=$(champion_path)
tuneloop evaluate --model "$old_model" --data build/loop-heldout.csv --out reports/loop/before --behaviour none >/dev/null
before=$(accuracy reports/loop/before)

tuneloop serve --port "$PORT" > build/loop-serve.log 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 120); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 1; done
old_tag=$(curl -s "http://127.0.0.1:$PORT/metadata" | python -c 'import json,sys; print(json.load(sys.stdin)["model"])')
echo "serving $old_tag on :$PORT; sending $DRIFT traffic with feedback"
tuneloop simulate --url "http://127.0.0.1:$PORT" --rows 1000 --drift "$DRIFT" --share 0.5 --feedback 0.5 --seed 7

tuneloop pipeline monitor          # window 1: drift, the policy waits for a second drifted window
tuneloop pipeline monitor          # window 2: retrain -> gate -> promote (in-process: no Prefect server)

new_tag=$old_tag
for _ in $(seq 60); do
  new_tag=$(curl -s -X POST "http://127.0.0.1:$PORT/classify" -H 'content-type: application/json' \
    -d '{"texts": ["I lost my card"]}' | python -c 'import json,sys; print(json.load(sys.stdin)[0]["model"])')
  [ "$new_tag" != "$old_tag" ] && break; sleep 1
done
new_model=$(champion_path)
tuneloop evaluate --model "$new_model" --data build/loop-heldout.csv --out reports/loop/after --behaviour none >/dev/null
after=$(accuracy reports/loop/after)
echo
echo "the service answered with $old_tag before and with $new_tag after the loop"
echo "accuracy on held-out $DRIFT traffic: before $before, after $after"
echo "look at: reports/gate/gate.md (the gate), monitoring/state/ (verdicts, Evidently HTML reports),"
echo "         tuneloop monitor ui (Evidently UI), tuneloop dashboard (Prefect runs), tuneloop models list"
