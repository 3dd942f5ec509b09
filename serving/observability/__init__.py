"""What an operator sees of the server: its Prometheus metrics, every name defined once."""
