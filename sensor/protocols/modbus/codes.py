"""Modbus code tables (Modbus Application Protocol Specification V1.1b3). Tables only, no logic."""

from __future__ import annotations

# Section 5.1 public function codes: code -> (name as Wireshark shows it, access, table)
FUNCTIONS: dict[int, tuple[str, str, str | None]] = {
    1: ("Read Coils", "read", "coils"),
    2: ("Read Discrete Inputs", "read", "discrete_inputs"),
    3: ("Read Holding Registers", "read", "holding_registers"),
    4: ("Read Input Registers", "read", "input_registers"),
    5: ("Write Single Coil", "write", "coils"),
    6: ("Write Single Register", "write", "holding_registers"),
    7: ("Read Exception Status", "diagnostic", None),
    8: ("Diagnostics", "diagnostic", None),
    11: ("Get Comm Event Counter", "diagnostic", None),
    12: ("Get Comm Event Log", "diagnostic", None),
    15: ("Write Multiple Coils", "write", "coils"),
    16: ("Write Multiple Registers", "write", "holding_registers"),
    17: ("Report Slave ID", "diagnostic", None),
    20: ("Read File Record", "read", "file_records"),
    21: ("Write File Record", "write", "file_records"),
    22: ("Mask Write Register", "write", "holding_registers"),
    23: ("Read Write Register", "read_write", "holding_registers"),
    24: ("Read FIFO Queue", "read", "holding_registers"),
    43: ("Encapsulated Interface Transport", "diagnostic", None),
}
# Section 5: 65-72 and 100-110 are user defined; everything else not public is reserved.
USER_DEFINED = frozenset(range(65, 73)) | frozenset(range(100, 111))
WRITE_CODES = frozenset({5, 6, 15, 16, 21, 22, 23})

# Section 7 exception codes
EXCEPTIONS: dict[int, str] = {
    1: "Illegal function",
    2: "Illegal data address",
    3: "Illegal data value",
    4: "Slave device failure",
    5: "Acknowledge",
    6: "Slave device busy",
    8: "Memory parity error",
    10: "Gateway path unavailable",
    11: "Gateway target device failed to respond",
}

# Section 6.8.1 diagnostics sub-function codes
DIAGNOSTICS: dict[int, str] = {
    0: "Return Query Data",
    1: "Restart Communications Option",
    2: "Return Diagnostic Register",
    3: "Change ASCII Input Delimiter",
    4: "Force Listen Only Mode",
    10: "Clear Counters and Diagnostic Register",
    11: "Return Bus Message Count",
    12: "Return Bus Communication Error Count",
    13: "Return Bus Exception Error Count",
    14: "Return Slave Message Count",
    15: "Return Slave No Response Count",
    16: "Return Slave NAK Count",
    17: "Return Slave Busy Count",
    18: "Return Bus Character Overrun Count",
    20: "Clear Overrun Counter and Flag",
}
# Sub-functions that change device state: restart, listen-only (silences the device), clear counters.
DISRUPTIVE_DIAGNOSTICS = frozenset({1, 3, 4, 10, 20})

# Section 6.19-6.21 MEI types of function 43
MEI_TYPES: dict[int, str] = {13: "CANopen General Reference", 14: "Read Device Identification"}
READ_DEVICE_ID_CODES: dict[int, str] = {1: "basic", 2: "regular", 3: "extended", 4: "specific"}
DEVICE_ID_OBJECTS: dict[int, str] = {
    0: "vendor_name",
    1: "product_code",
    2: "major_minor_revision",
    3: "vendor_url",
    4: "product_name",
    5: "model_name",
    6: "user_application_name",
}
