"""MQTT decoder: codes (tables), wire (packet layouts), decoder (framing, session state, pairing), tls (8883)."""

from sensor.protocols.mqtt.decoder import MqttDecoder
from sensor.protocols.mqtt.tls import MqttTlsDecoder
from sensor.protocols.registry import register

register("mqtt", MqttDecoder, (1883,))
register("mqtt_tls", MqttTlsDecoder, (8883,))

__all__ = ["MqttDecoder", "MqttTlsDecoder"]
