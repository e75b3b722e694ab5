"""Modbus/TCP decoder: codes (tables), wire (PDU layouts), decoder (framing and pairing)."""

from sensor.protocols.modbus.decoder import ModbusDecoder
from sensor.protocols.registry import register

register("modbus", ModbusDecoder, (502,))

__all__ = ["ModbusDecoder"]
