"""netsim: runs many real swarmnode nodes over a fault-injecting network and checks they converge.

Arrives with the netsim issue; the package exists now so packaging, mypy and imports are stable.
"""
