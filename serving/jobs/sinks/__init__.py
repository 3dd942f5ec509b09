"""jobs/sinks"""
