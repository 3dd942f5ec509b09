"""Generated modules of the cnnserve.v1 protos live in v1/."""
