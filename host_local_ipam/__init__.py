"""host-local IPAM: leases addresses from range sets into a store shared with the Go plugin."""
