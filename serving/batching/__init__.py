"""Dynamic batching: the batcher (queue, take, run), its wait policies, and the event-loop load meter
the adaptive policy scales its waits by. No gRPC.
"""
