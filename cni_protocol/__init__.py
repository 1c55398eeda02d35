"""The CNI execution protocol shared by our plugins: env and stdin parsing, version
negotiation, result conversion and error codes. Standard library only, cheap to import."""
