"""netsim: runs many real swarmnode nodes over a fault-injecting network and checks they converge.

Real nodes: ``cluster.py`` (nodes behind their own proxies, ``proxy.py``; processes,
``nodeproc.py``), ``scenario.py`` (the scenarios and what they can use), ``runner.py`` (run,
converge, check, report), ``invariants.py`` (the checks), ``python -m netsim`` (the CLI).
Simulation: ``sim.py``, ``simnode.py``, ``swarm.py`` drive the swarm's state machines on virtual
time.
"""
