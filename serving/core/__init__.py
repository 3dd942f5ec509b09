"""The transport-free serving core: the live models (registry), a request's images as an input batch
(inputs), every operation on plain values (dataplane) and what every call goes through (calls). No gRPC.
"""
