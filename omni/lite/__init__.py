"""The ``lite`` engine: a real spoken conversation on a plain CPU, from models in PyPI packages.

Turn-taking from Silero VAD, streaming recognition with pocketsphinx, replies from
SmolLM2-135M-Instruct (llama.cpp through xllamacpp) and speech from Piper.
"""
