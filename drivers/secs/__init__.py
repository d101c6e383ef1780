"""SECS/GEM over HSMS: the ``hsms`` host driver and a GEM equipment simulator.

- :mod:`drivers.secs.codec`: SECS-II items (SEMI E5).
- :mod:`drivers.secs.hsms`: HSMS-SS framing, session state and timers (SEMI E37).
- :mod:`drivers.secs.gem`: the GEM host scenarios (SEMI E30).
- :mod:`drivers.secs.driver`: the driver on the gateway's driver contract.
- :mod:`drivers.secs.simulator`: a passive GEM equipment for the demo and tests.
"""
