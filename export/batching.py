"""Export's dynamic-batching defaults: light enough for `--help` (no numpy, no TensorFlow)."""

# The longest a batch may wait to fill. cnnserve's adaptive batcher waits only under concurrent traffic,
# only until every recent client has a request in, and only as much as its worker is busy: so the delay
# is used where batching saves CPU the worker lacks (mnist_cnn on two cores, 5 ms against 1 ms, servers
# side by side: 64 clients x 1 image +14% calls/s and p99 47 vs 60 ms, 8 x 1 +14%), while a lone client
# never waits and an open-loop stream of 1,000 calls/s saw the same latency as with 1 ms (p50 2.6-3.4 ms).
DEFAULT_MAX_QUEUE_DELAY_US = 5000
