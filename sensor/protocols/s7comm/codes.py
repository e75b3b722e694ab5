"""S7comm, S7comm-plus and COTP code tables, named as Wireshark's dissectors name them. Tables only, no logic.

Sources: Wireshark epan/dissectors/packet-s7comm.c / packet-s7comm.h (value_string tables of the same names),
packet-cotp.c (TPDU types), the S7comm-plus plugin (opcodes, functions) and ICSNPP's consts.zeek (PI services).
"""

from __future__ import annotations

# ISO 8073 section 13.1, table 8: TPDU codes (upper nibble of the second COTP byte), Wireshark's cotp_tpdu_type.
COTP_PDU_TYPES: dict[int, str] = {
    0x1: "ED Expedited Data",
    0x2: "EA Expedited Data Acknowledgement",
    0x5: "RJ Reject",
    0x6: "AK Data Acknowledgement",
    0x7: "ER TPDU Error",
    0x8: "DR Disconnect Request",
    0xC: "DC Disconnect Confirm",
    0xD: "CC Connect Confirm",
    0xE: "CR Connect Request",
    0xF: "DT Data",
}
COTP_DT, COTP_CR, COTP_CC, COTP_DR, COTP_DC = 0xF, 0xE, 0xD, 0x8, 0xC

# ISO 8073 section 13.3.4 (e): DR reason codes
COTP_DISCONNECT_REASONS: dict[int, str] = {
    0x00: "Reason not specified",
    0x01: "Congestion at TSAP",
    0x02: "Session entity not attached to TSAP",
    0x03: "Address unknown",
    0x80: "Normal disconnect initiated by the session entity",
    0x81: "Remote transport entity congestion at connect request time",
    0x82: "Connection negotiation failed",
    0x83: "Duplicate source reference detected for the same pair of NSAPs",
    0x84: "Mismatched references",
    0x85: "Protocol error",
    0x87: "Reference overflow",
    0x88: "Connection request refused on this network connection",
    0x8A: "Header or parameter length invalid",
}
# Section 13.3.4 parameters of CR/CC
COTP_PARAM_TPDU_SIZE = 0xC0
COTP_PARAM_SRC_TSAP = 0xC1  # calling TSAP
COTP_PARAM_DST_TSAP = 0xC2  # called TSAP
# First TSAP byte of S7-300/400 connections (snap7: CONNTYPE_PG/OP/BASIC)
TSAP_CONNECTION_TYPES: dict[int, str] = {1: "PG", 2: "OP", 3: "S7 basic"}

S7COMM_PROT_ID = 0x32
S7COMM_PLUS_PROT_ID = 0x72

# rosctr_names
ROSCTR_JOB, ROSCTR_ACK, ROSCTR_ACK_DATA, ROSCTR_USERDATA = 1, 2, 3, 7
ROSCTR_NAMES: dict[int, str] = {1: "Job", 2: "Ack", 3: "Ack_Data", 7: "Userdata"}

# errcls_names
ERROR_CLASSES: dict[int, str] = {
    0x00: "No error",
    0x81: "Application relationship",
    0x82: "Object definition",
    0x83: "No resources available",
    0x84: "Error on service processing",
    0x85: "Error on supplies",
    0x87: "Access error",
}

# param_errcode_names (header error class << 8 | error code, and the userdata parameter error code): the subset
# that S7 devices answer to the functions this decoder knows; an unlisted code keeps its number and "unknown".
ERROR_CODES: dict[int, str] = {
    0x0000: "No error",
    0x0110: "Invalid block number",
    0x0111: "Invalid request length",
    0x0112: "Invalid parameter",
    0x0113: "Invalid block type",
    0x0114: "Block not found",
    0x0115: "Block already exists",
    0x0116: "Block is write-protected",
    0x0117: "The block/operating system update is too large",
    0x0118: "Invalid block number",
    0x0119: "Incorrect password entered",
    0x011A: "PG resource error",
    0x011B: "PLC resource error",
    0x011C: "Protocol error",
    0x011D: "Too many blocks (module-related restriction)",
    0x011F: "Result buffer too small",
    0x0120: "End of block list",
    0x0140: "Insufficient memory available",
    0x0141: "Job cannot be processed because of a lack of resources",
    0x8001: "The requested service cannot be performed while the block is in the current status",
    0x8003: "S7 protocol error: Error occurred while transferring the block",
    0x8100: "Application, general error: Service unknown to remote module",
    0x8104: "This service is not implemented on the module or a frame error was reported",
    0x8204: "The type specification for the object is inconsistent",
    0x8205: "A copied block already exists and is not linked",
    0x8301: "Insufficient memory space or work memory on the module, or specified storage medium not accessible",
    0x8302: "Too few resources available or the processor resources are not available",
    0x8304: "No further parallel upload possible. There is a resource bottleneck",
    0x8305: "Function not available",
    0x8306: "Insufficient work memory (for copying, linking, loading AWP)",
    0x8307: "Not enough retentive work memory (for copying, linking, loading AWP)",
    0x8401: "S7 protocol error: Invalid service sequence (for example, loading or uploading a block)",
    0x8402: "Service cannot execute owing to status of the addressed object",
    0x8404: "S7 protocol: The function cannot be performed",
    0x8405: "Remote block is in DISABLE state (CFB). The function cannot be performed",
    0x8500: "S7 protocol error: Wrong frames",
    0x8503: "Alarm from the module: Service canceled prematurely",
    0x8701: "Error addressing the object on the communications partner (for example, area length error)",
    0x8702: "The requested service is not supported by the module",
    0x8703: "Access to object refused",
    0x8704: "Access error: Object damaged",
    0xD001: "Protocol error: Illegal job number",
    0xD002: "Parameter error: Illegal job variant",
    0xD041: "Data error: Illegal status list ID",
    0xD042: "Data error: Illegal tag address",
    0xD081: "Function not permitted in current mode",
    0xD0A1: "Function not permitted in current protection level",
    0xD201: "Syntax error in block name",
    0xD202: "Syntax error in function parameters",
    0xD209: "(At least) one of the given blocks not found on the module",
    0xD20C: "OB cannot be copied because the associated priority class does not exist",
    0xD20E: "No (further) block available",
    0xD210: "Invalid block number",
    0xD241: "The function is not permitted in the current protection level",
    0xD401: "Information function unavailable",
    0xD402: "Information function unavailable",
    0xD601: "Syntax error in function parameter",
    0xD602: "Incorrect password entered",
    0xD603: "The connection has already been legitimized",
    0xD604: "The connection has already been enabled",
    0xD605: "Legitimization not possible because password does not exist",
    0xDC01: "Date and/or time invalid",
}

# param_functionnames: code -> (name, access). Access is the intent derived once for rules and the model.
FUNC_CPU_SERVICES, FUNC_SETUP, FUNC_READ_VAR, FUNC_WRITE_VAR = 0x00, 0xF0, 0x04, 0x05
FUNC_REQUEST_DOWNLOAD, FUNC_DOWNLOAD_BLOCK, FUNC_DOWNLOAD_ENDED = 0x1A, 0x1B, 0x1C
FUNC_START_UPLOAD, FUNC_UPLOAD, FUNC_END_UPLOAD = 0x1D, 0x1E, 0x1F
FUNC_PI_SERVICE, FUNC_PLC_STOP = 0x28, 0x29
FUNCTIONS: dict[int, tuple[str, str]] = {
    0x00: ("CPU services", "other"),
    0x01: ("Mode transition", "control"),
    0xF0: ("Setup communication", "setup"),
    0x04: ("Read Var", "read"),
    0x05: ("Write Var", "write"),
    0x1A: ("Request download", "download"),
    0x1B: ("Download block", "download"),
    0x1C: ("Download ended", "download"),
    0x1D: ("Start upload", "upload"),
    0x1E: ("Upload", "upload"),
    0x1F: ("End upload", "upload"),
    0x28: ("PI-Service", "control"),
    0x29: ("PLC Stop", "control"),
}

# item_areanames / item_areanames_short
AREAS: dict[int, tuple[str, str]] = {
    0x01: ("Data record", "RECORD"),
    0x03: ("System info of 200 family", "SI200"),
    0x05: ("System flags of 200 family", "SF200"),
    0x06: ("Analog inputs of 200 family", "AI200"),
    0x07: ("Analog outputs of 200 family", "AO"),
    0x80: ("Direct peripheral access (P)", "P"),
    0x81: ("Inputs (I)", "I"),
    0x82: ("Outputs (Q)", "Q"),
    0x83: ("Flags (M)", "M"),
    0x84: ("Data blocks (DB)", "DB"),
    0x85: ("Instance data blocks (DI)", "DI"),
    0x86: ("Local data (L)", "L"),
    0x87: ("Unknown yet (V)", "V"),
    28: ("S7 counters (C)", "C"),
    29: ("S7 timers (T)", "T"),
    30: ("IEC counters (200 family)", "C200"),
    31: ("IEC timers (200 family)", "T200"),
}
AREA_DB = 0x84
NUMBERED_AREAS = frozenset({28, 29, 30, 31})  # address is the timer/counter number (address.number)

# item_transportsizenames (in the request item); Wireshark's table names 30/31 the other way round, kept as is.
ITEM_TRANSPORT_SIZES: dict[int, str] = {
    1: "BIT", 2: "BYTE", 3: "CHAR", 4: "WORD", 5: "INT", 6: "DWORD", 7: "DINT", 8: "REAL", 9: "DATE", 10: "TOD",
    11: "TIME", 12: "S5TIME", 15: "DATE_AND_TIME", 28: "COUNTER", 29: "TIMER", 30: "IEC TIMER", 31: "IEC COUNTER",
    32: "HS COUNTER",
}  # fmt: skip

# item_syntaxid_names
SYNTAX_S7ANY = 0x10
SYNTAX_IDS: dict[int, str] = {
    0x10: "S7ANY", 0x11: "ParameterShort", 0x12: "ParameterExtended", 0x13: "PBC-R_ID", 0x15: "ALARM_LOCKFREE",
    0x16: "ALARM_IND", 0x19: "ALARM_ACK", 0x1A: "ALARM_QUERYREQ", 0x1C: "NOTIFY_IND", 0x82: "NCK", 0x83: "NCK_M",
    0x84: "NCK_I", 0xA2: "DRIVEESANY", 0xB2: "1200SYM", 0xB0: "DBREAD",
}  # fmt: skip

# data_transportsizenames; lengths of 3 (BIT), 4 (BYTE/WORD/DWORD) and 5 (INTEGER) are given in bits
DATA_TRANSPORT_SIZES: dict[int, str] = {
    0: "NULL", 3: "BIT", 4: "BYTE/WORD/DWORD", 5: "INTEGER", 6: "DINTEGER", 7: "REAL", 9: "OCTET STRING",
    17: "NCK ADDRESS1", 18: "NCK ADDRESS2",
}  # fmt: skip
DATA_SIZE_IN_BITS = frozenset({4, 5})  # Wireshark divides these by 8; BIT (3) carries one byte per bit given

# s7comm_item_return_valuenames
RETURN_CODES: dict[int, str] = {
    0x00: "Reserved",
    0x01: "Hardware error",
    0x03: "Accessing the object not allowed",
    0x05: "Invalid address",
    0x06: "Data type not supported",
    0x07: "Data type inconsistent",
    0x0A: "Object does not exist",
    0xFF: "Success",
}

# blocktype_names (block type as two ASCII hex digits in file names: "_0A00001P")
BLOCK_TYPES: dict[str, str] = {
    "08": "OB", "09": "CMod", "0A": "DB", "0B": "SDB", "0C": "FC", "0D": "SFC", "0E": "FB", "0F": "SFB",
}  # fmt: skip
# subblktype_names (binary block type in block functions)
SUBBLOCK_TYPES: dict[int, str] = {
    0x00: "Not set", 0x08: "OB", 0x0A: "DB", 0x0B: "SDB", 0x0C: "FC", 0x0D: "SFC", 0x0E: "FB", 0x0F: "SFB",
}  # fmt: skip
# blocktype_attribute1_names / blocktype_attribute2_names
FILE_IDENTIFIERS: dict[str, str] = {"_": "Complete Module", "$": "Module header for up-loading"}
FILESYSTEMS: dict[str, str] = {
    "P": "Passive (copied, but not chained) module",
    "A": "Active embedded module",
    "B": "Active as well as passive module",
}

# PI services (Wireshark's pi_service_names; descriptions as ICSNPP's s7comm_plc_control_services)
PI_SERVICES: dict[str, str] = {
    "_INSE": "Activates a PLC module",
    "_INS2": "Activates a PLC module",
    "_DELE": "Removes module from the PLC's passive file system",
    "P_PROGRAM": "PLC Start / Stop",
    "_MODU": "PLC Copy Ram to Rom",
    "_GARB": "Compress PLC memory",
    "_N_LOGIN_": "Login",
    "_N_LOGOUT": "Logout",
    "_N_CANCEL": "Cancels NC alarm",
    "_N_DASAVE": "PI-Service for copying data from SRAM to FLASH",
    "_N_DIGIOF": "Turns off digitizing",
    "_N_DIGION": "Turns on digitizing",
    "_N_DZERO_": "Set all D numbers invalid for function",
    "_N_F_OPER": "Opens a file read-only",
    "_N_OST_OF": "Overstore OFF",
    "_N_OST_ON": "Overstore ON",
    "_N_SCALE_": "Unit of measurement setting (metric<->INCH)",
    "_N_SETUFR": "Activates user frame",
    "_N_STRTLK": "The global start disable is set",
    "_N_STRTUL": "The global start disable is reset",
    "_N_TMRASS": "Resets the Active status",
    "_N_F_DELE": "Deletes file",
    "_N_EXTERN": "Selects external program for execution",
    "_N_EXTMOD": "Selects external program for execution",
}

# userdata_type_names (upper two bits of the type/group byte) and the method byte
USERDATA_TYPES: dict[int, str] = {0: "Indication", 1: "Request", 2: "Response"}
UD_TYPE_IND, UD_TYPE_REQ, UD_TYPE_RES = 0, 1, 2
USERDATA_METHODS: dict[int, str] = {0x11: "Request", 0x12: "Response"}

# userdata_functiongroup_names: group -> (name, access)
FG_TIS, FG_CYCLIC, FG_BLOCK, FG_CPU, FG_SEC, FG_PBC, FG_TIME = 1, 2, 3, 4, 5, 6, 7
FUNCTION_GROUPS: dict[int, tuple[str, str]] = {
    0x00: ("Mode-transition", "control"),
    0x01: ("Programmer commands", "program"),
    0x02: ("Cyclic services", "read"),
    0x03: ("Block functions", "diagnostic"),
    0x04: ("CPU functions", "diagnostic"),
    0x05: ("Security", "security"),
    0x06: ("PBC BSEND", "other"),
    0x07: ("Time functions", "diagnostic"),
    0x3F: ("NC programming", "program"),
    0x20: ("DR Routing", "other"),
}

# Sub-function names per function group
SUBFUNCTIONS: dict[int, dict[int, str]] = {
    FG_TIS: {
        0x01: "Block status", 0x02: "Variable status", 0x03: "Output ISTACK", 0x04: "Output BSTACK",
        0x05: "Output LSTACK", 0x06: "Time measurement from to", 0x07: "Force selection", 0x08: "Modify variable",
        0x09: "Force", 0x0A: "Breakpoint", 0x0B: "Exit HOLD", 0x0C: "Memory reset", 0x0D: "Disable job",
        0x0E: "Enable job", 0x0F: "Delete job", 0x10: "Read job list", 0x11: "Read job", 0x12: "Replace job",
        0x13: "Block status v2", 0x16: "Flash LED",
    },
    FG_CYCLIC: {
        0x01: "Cyclic transfer", 0x04: "Unsubscribe", 0x05: "Change driven transfer",
        0x07: "Change driven transfer modify", 0x08: "RDREC",
    },
    FG_BLOCK: {0x01: "List blocks", 0x02: "List blocks of type", 0x03: "Get block info"},
    FG_CPU: {
        0x01: "Read SZL", 0x02: "Message service", 0x03: "Diagnostic message", 0x05: "ALARM_8 indication",
        0x06: "NOTIFY indication", 0x07: "ALARM_8 lock", 0x08: "ALARM_8 unlock", 0x09: "SCAN indication",
        0x0B: "ALARM ack", 0x0C: "ALARM ack indication", 0x0D: "ALARM lock indication",
        0x0E: "ALARM unlock indication", 0x10: "AR_SEND indication", 0x11: "ALARM_SQ indication",
        0x12: "ALARM_S indication", 0x13: "ALARM query", 0x16: "NOTIFY_8 indication",
    },
    FG_SEC: {0x01: "PLC password"},
    FG_TIME: {0x01: "Read clock", 0x02: "Set clock", 0x03: "Read clock (following)", 0x04: "Set clock"},
    0x3F: {
        1: "Request download", 2: "Download block", 3: "Continue download", 4: "Download ended",
        6: "Start upload", 7: "Upload", 8: "Continue upload",
    },
    0x20: {1: "DRR Init", 2: "DRR Finish", 3: "DRR Data"},
}  # fmt: skip
SUBF_READ_SZL = 0x01
SUBF_BLOCK_LIST, SUBF_BLOCK_LISTTYPE, SUBF_BLOCK_INFO = 0x01, 0x02, 0x03
SUBF_TIME_SET, SUBF_TIME_SET2 = 0x02, 0x04
# Sub-functions whose intent differs from their group's
SUBFUNCTION_ACCESS: dict[tuple[int, int], str] = {
    (FG_TIME, 0x02): "write",
    (FG_TIME, 0x04): "write",
    (FG_TIS, 0x08): "write",
    (FG_TIS, 0x09): "write",
    (FG_TIS, 0x0C): "control",
    (FG_TIS, 0x02): "read",
}

# SZL partial list numbers (low byte of the SZL-ID), Wireshark's szl_id_partlist_names
SZL_LISTS: dict[int, str] = {
    0x00: "List of all the SZL-IDs of a module",
    0x11: "Module identification",
    0x12: "CPU characteristics",
    0x13: "User memory areas",
    0x14: "System areas",
    0x15: "Block types",
    0x16: "Priority classes",
    0x17: "List of the permitted SDBs with a number < 1000",
    0x18: "Maximum S7-300 I/O configuration",
    0x19: "Status of the module LEDs",
    0x1C: "Component Identification",
    0x21: "Interrupt / error assignment",
    0x22: "Interrupt status",
    0x23: "Priority classes",
    0x24: "Modes",
    0x25: "Assignment between process image partitions and OBs",
    0x31: "Communication capability parameters",
    0x32: "Communication status data",
    0x33: "Diagnostics: device logon list",
    0x37: "Ethernet - Details of a Module",
    0x71: "H CPU group information",
    0x74: "Status of the module LEDs",
    0x75: "Switched DP slaves in the H-system",
    0x81: "Start information list",
    0x82: "Start event list",
    0x91: "Module status information",
    0x92: "Rack / station status information",
    0x94: "Rack / station status information",
    0x95: "Extended DP master system information",
    0x96: "Module status information, PROFINET IO and PROFIBUS DP",
    0xA0: "Diagnostic buffer of the CPU",
    0xB1: "Module diagnostic information (data record 0)",
    0xB2: "Module diagnostic information (data record 1), geographical address",
    0xB3: "Module diagnostic information (data record 1), logical address",
    0xB4: "Diagnostic data of a DP slave",
}
SZL_MODULE_ID, SZL_COMPONENT_ID, SZL_MODES = 0x11, 0x1C, 0x24
# SZL-ID 0x0011 record indexes (module identification), Wireshark's szl_0111_index_names
SZL_0011_INDEX: dict[int, str] = {
    0x0001: "order_number",  # Identification of the module
    0x0006: "hardware_order_number",  # Identification of the basic hardware
    0x0007: "firmware_order_number",  # Identification of the basic firmware
    0x0081: "firmware_extension",  # Identification of the firmware-extension
}
# SZL-ID 0x001c record indexes (component identification): index -> field, text bytes
SZL_001C_INDEX: dict[int, tuple[str, int]] = {
    0x0001: ("system_name", 24),  # Name of the automation system
    0x0002: ("module_name", 24),  # Name of the module
    0x0003: ("plant_id", 32),  # Plant designation of the module
    0x0004: ("copyright", 26),  # Copyright entry
    0x0005: ("serial_number", 24),  # Serial number of the module
    0x0007: ("module_type_name", 32),  # Module type name
    0x0008: ("memory_card_serial", 32),  # Serial number of the memory card
    0x000B: ("location_id", 32),  # Location designation of a module
}
# SZL-ID 0x0424 byte 3 (bzu_id low nibble): CPU operating mode, Wireshark's szl_0424_0000_bzu_id_names
CPU_MODES: dict[int, str] = {
    0x0: "Unknown", 0x1: "STOP (update)", 0x2: "STOP (memory reset)", 0x3: "STOP (self initialization)",
    0x4: "STOP (internal)", 0x5: "STARTUP (complete restart)", 0x6: "STARTUP (cold restart)",
    0x7: "STARTUP (restart)", 0x8: "RUN", 0xA: "HOLD", 0xD: "DEFECT",
}  # fmt: skip

# S7comm-plus (Wireshark s7comm_plus plugin: opcode_names, data_functioncode_names, protocolversion_names)
PLUS_VERSIONS: dict[int, str] = {0x01: "V1", 0x02: "V2", 0x03: "V3", 0xFE: "Light"}
PLUS_OPCODES: dict[int, str] = {0x31: "Request", 0x32: "Response", 0x33: "Notification", 0x02: "Response2"}
PLUS_OP_REQUEST, PLUS_OP_RESPONSE, PLUS_OP_NOTIFICATION, PLUS_OP_RESPONSE2 = 0x31, 0x32, 0x33, 0x02
PLUS_FUNCTIONS: dict[int, str] = {
    0x04BB: "Explore",
    0x04CA: "CreateObject",
    0x04D4: "DeleteObject",
    0x04F2: "SetVariable",
    0x04FC: "GetVariable",
    0x0506: "AddLink",
    0x051A: "RemoveLink",
    0x0524: "GetLink",
    0x0542: "SetMultiVariables",
    0x054C: "GetMultiVariables",
    0x0556: "BeginSequence",
    0x0560: "EndSequence",
    0x056B: "Invoke",
    0x057C: "SetVarSubStreamed",
    0x0586: "GetVarSubStreamed",
    0x0590: "GetVariablesAddress",
    0x059A: "Abort",
    0x05A9: "Error",
    0x05B3: "InitSsl",
}
