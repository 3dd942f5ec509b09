#!/usr/bin/env bash
# The main job, end to end on the bundled MNIST digits: train → export (with parity) → serve →
# classify sample digits through the server → look inside the model (filters, an explanation) →
# stop the server cleanly. Run by `make demo`; expects `cnnserve` on PATH.
set -euo pipefail

OUT=demo_output
RUN=runs/demo-mnist_cnn
REPO=model_repository
PORT=${CNNSERVE_DEMO_PORT:-50071}
mkdir -p "$OUT"

step() { printf '\n==> %s\n' "$*"; }

step "train mnist_cnn on the bundled MNIST digits"
cnnserve train mnist_cnn --out "$RUN" --force

step "export it to ONNX with verified parity into ./$REPO"
cnnserve export "$RUN" --repo "$REPO" --version 1 --force --int8
cnnserve inspect "$REPO/mnist_cnn"

step "write sample digit images to $OUT/digits"
python scripts/write_sample_digits.py "$OUT/digits" --per-class 2

step "start the gRPC server on 127.0.0.1:$PORT"
cnnserve serve --repo "$REPO" --host 127.0.0.1 --port "$PORT" --workers 1 --metrics-port 0 \
    >"$OUT/server.log" 2>&1 &
SERVER_PID=$!
stop_server() {
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID"
        wait "$SERVER_PID" && echo "server stopped cleanly (exit 0)" || echo "server exited with $?"
    fi
}
trap stop_server EXIT
for _ in $(seq 1 120); do
    python -m cnnserve.serving.grpc.healthcheck --address "127.0.0.1:$PORT" >/dev/null 2>&1 && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$OUT/server.log"; exit 1; }
    sleep 0.5
done
python -m cnnserve.serving.grpc.healthcheck --address "127.0.0.1:$PORT"

step "classify the sample digits through the server"
cnnserve classify --server "127.0.0.1:$PORT" --model mnist_cnn --top-k 2 "$OUT"/digits/*/*.png

step "layer activations of one digit (conv1 mosaic)"
FIRST=$(ls "$OUT"/digits/7/*.png | head -n 1)
cnnserve activations --server "127.0.0.1:$PORT" --model mnist_cnn --layer conv1 \
    --png "$OUT/activations-conv1.png" "$FIRST"

step "what the model learned: conv1 filters, and an occlusion explanation of $FIRST"
cnnserve filters --server "127.0.0.1:$PORT" --model mnist_cnn --layer conv1 --png "$OUT/filters-conv1.png"
cnnserve explain --server "127.0.0.1:$PORT" --model mnist_cnn --method occlusion \
    --png "$OUT/explain-occlusion.png" "$FIRST"

step "batch classification job over the labelled folder, through the server"
cnnserve classify-folder "$OUT/digits" --model mnist_cnn --server "127.0.0.1:$PORT" \
    --output "$OUT/digits.csv" --restart

step "stop the server"
stop_server
trap - EXIT

printf '\nDemo finished. Wrote:\n'
printf '  %s\n' "$RUN (run directory: model.keras, run.json, history.png, misclassified.png, confusion_matrix.png)" \
    "$REPO/mnist_cnn (config.pbtxt, labels.txt, 1/model.onnx, 1/parity.json)" \
    "$OUT/filters-conv1.png" "$OUT/explain-occlusion.png" "$OUT/activations-conv1.png" "$OUT/digits.csv"
printf '\nTo look inside the model in a browser (the model explorer):\n'
printf '  cnnserve serve --repo %s --http-port 8080 --ui    # then open http://localhost:8080/\n' "$REPO"
