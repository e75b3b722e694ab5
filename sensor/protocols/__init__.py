"""Protocol decoders, one package per protocol, found through ``registry``."""
