"""Real protocol peers for the live test plant, each run inside its own network namespace.

    python tests/live_peers.py plc ADDR        # pymodbus server on :502 and snap7 server on :102, until killed
    python tests/live_peers.py broker ADDR     # mosquitto on :1883
    python tests/live_peers.py hmi PLC BROKER  # polls the PLC (Modbus + S7) and publishes telemetry
    python tests/live_peers.py attacker PLC    # S7 CPU stop and a Modbus coil write
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time


def plc(addr: str) -> None:
    import snap7
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice
    from snap7.type import SrvArea

    server = snap7.Server(log=False)
    server.register_area(SrvArea.DB, 1, bytearray(64))
    server.register_area(SrvArea.MK, 0, bytearray(32))
    server.start_to(addr, 102)

    async def serve() -> None:
        dev = SimDevice(
            1,
            simdata=(
                [SimData(0, values=[False] * 100, datatype=DataType.BITS)],
                [SimData(0, values=[False] * 100, datatype=DataType.BITS)],
                [SimData(0, values=list(range(100)), datatype=DataType.REGISTERS)],
                [SimData(0, values=list(range(100)), datatype=DataType.REGISTERS)],
            ),
        )
        srv = ModbusTcpServer([dev], address=(addr, 502))
        await srv.serve_forever()

    asyncio.run(serve())


def broker(addr: str) -> None:
    conf = os.path.join(tempfile.mkdtemp(), "mosquitto.conf")
    with open(conf, "w") as f:
        f.write(f"listener 1883 {addr}\nallow_anonymous true\nuser root\n")
    os.execvp("mosquitto", ["mosquitto", "-c", conf])


def _wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    import socket

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{host}:{port} not reachable")


def hmi(plc_addr: str, broker_addr: str, rounds: int = 5) -> None:
    import paho.mqtt.client as mqtt
    import snap7
    from pymodbus.client import ModbusTcpClient

    _wait_port(plc_addr, 502)
    _wait_port(plc_addr, 102)
    _wait_port(broker_addr, 1883)
    mb = ModbusTcpClient(plc_addr, port=502, timeout=2, retries=0)
    mb.connect()
    s7 = snap7.Client()
    s7.connect(plc_addr, 0, 1)
    mq = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="hmi-1")
    mq.connect(broker_addr, 1883)
    mq.loop_start()
    for i in range(rounds):
        mb.read_holding_registers(0, count=10, device_id=1)
        s7.db_read(1, 0, 8)
        mq.publish("plant/line1/telemetry", f'{{"temp": {20 + i}}}', qos=1).wait_for_publish(5)
        time.sleep(0.3)
    mq.loop_stop()
    mq.disconnect()
    s7.disconnect()
    mb.close()


def attacker(plc_addr: str) -> None:
    import snap7
    from pymodbus.client import ModbusTcpClient

    _wait_port(plc_addr, 102)
    s7 = snap7.Client()
    s7.connect(plc_addr, 0, 1)
    try:
        s7.plc_stop()
    except Exception as e:
        print(f"plc_stop: {e}", file=sys.stderr)
    s7.disconnect()
    mb = ModbusTcpClient(plc_addr, port=502, timeout=2, retries=0)
    mb.connect()
    mb.write_coil(3, True, device_id=1)
    mb.close()


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    {"plc": plc, "broker": broker, "hmi": hmi, "attacker": attacker}[cmd](*args)
    if cmd in ("plc",):
        subprocess.run(["sleep", "infinity"])
