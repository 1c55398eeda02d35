"""cni-inspect: the walk through a pod's network, from its netns to the node's NAT rules, as a tool.

Run as root in the node's network namespace. It reads what the bridge and host-local plugins
(ours or the Go reference) leave on a node: the libcni cache, the host-local lease store, links,
addresses, routes and neighbours (pyroute2), the masquerade rules of every backend (their
standard tools) and conntrack, and says what is broken and what to do about it. It never changes
anything. It is not on any plugin's exec path: pyroute2 is fine here.
"""
