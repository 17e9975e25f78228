"""The lab harness tests/ and bench/ share: network namespaces, real daemons, a real
kube-apiserver, load generators and the reload and failover experiments.

tests/ asserts what these measure; bench/ prints the figures.  Neither imports the other.
"""
