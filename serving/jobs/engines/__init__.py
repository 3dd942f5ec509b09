"""jobs/engines"""
