"""`classify-folder`: the batch job over an image folder -- discovery, engines (local worker processes,
a running server, Ray), result sinks (CSV, JSON Lines, Parquet), progress and the labelled-folder report.
"""
