"""The ``minicpmo`` engine: MiniCPM-o 4.5 in full-duplex mode on an NVIDIA GPU."""
