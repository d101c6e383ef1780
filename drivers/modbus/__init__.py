"""Modbus TCP and RTU: the ``modbus`` driver, its request planner and codec, and a
Modbus TCP simulator of a tool.

The driver is :class:`drivers.modbus.driver.ModbusDriver`; the simulator is
:class:`drivers.modbus.simulator.ModbusSimulator`. Both are imported on first use
(see :func:`drivers.driver_class`), so pymodbus loads only where Modbus is used.
"""
