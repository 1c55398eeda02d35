"""The CNI bridge plugin: pods on a Linux bridge through veth pairs, addressed by an IPAM plugin."""
