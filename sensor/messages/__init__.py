"""Ground floor: the data types shared by every stage. Imports nothing of the project."""

from sensor.messages.base import (
    SEVERITY_SCORES,
    Alert,
    Anomaly,
    Field,
    FieldRegistry,
    FlowInfo,
    Message,
    PacketRef,
)

__all__ = ["SEVERITY_SCORES", "Alert", "Anomaly", "Field", "FieldRegistry", "FlowInfo", "Message", "PacketRef"]
