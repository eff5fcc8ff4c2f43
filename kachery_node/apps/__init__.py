"""What scripts build on a node: tasks offered to and requested from a channel, and signed
submissions to someone else's feed.
"""
