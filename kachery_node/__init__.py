"""kachery_node: the network node (placeholder until storage lands)."""
