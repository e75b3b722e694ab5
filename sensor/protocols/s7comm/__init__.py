"""S7comm / S7comm-plus decoder: codes (tables), wire (PDU layouts), decoder (TPKT/COTP framing, state, pairing)."""

from sensor.protocols.registry import register
from sensor.protocols.s7comm.decoder import S7commDecoder

register("s7comm", S7commDecoder, (102,))

__all__ = ["S7commDecoder"]
