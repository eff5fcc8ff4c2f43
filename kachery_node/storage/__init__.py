"""A node's local storage: content-addressed files and their index, large-file manifests and
partial fetches, the cache limit, mutables, data objects and safe pickles, ``sha1://`` URIs. No
network.
"""
