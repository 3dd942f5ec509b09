"""Where a batch job's images are classified: local worker processes, a running server, or Ray Data.
Each engine takes batches of file paths and yields one result row per file, in order.
"""
