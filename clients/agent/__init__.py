"""The vendor agent: publishes a vendor's offers (built from real price catalogs), runs the
workloads assigned to it as local processes, and reports their status and measured usage."""
