"""The ``llamacpp`` engine: MiniCPM-o 4.5 served by a llama.cpp-omni server over HTTP.

llama.cpp-omni (the MiniCPM-o C++ runtime: Metal on Macs, CUDA, CPU) runs as a separate
``llama-server`` process that holds one live duplex session.  Audio, images and speech travel
as files in a folder both sides can read; control travels over the server's ``/v1/stream/*``
HTTP API.  One server process backs one replica.
"""
