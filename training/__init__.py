"""Keras training: the model zoo, offline dataset loaders, training jobs and run directories."""
