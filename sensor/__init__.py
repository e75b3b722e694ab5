"""Passive industrial network security sensor: Modbus/TCP, S7comm and MQTT."""

__version__ = "0.1.0"
